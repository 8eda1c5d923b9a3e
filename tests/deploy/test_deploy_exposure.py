"""What the deploy files expose (issue 18): ``0.0.0.0`` only where the file says why, the image's
HTTP side on loopback, and a Redis that asks for a password in the compose demo."""
from __future__ import annotations

import re

import yaml

from tests.deploy.deploy_files import DEPLOY, DOCKER

WILDCARD = re.compile(r"^\s*host:\s*['\"]?0\.0\.0\.0")


def test_every_wildcard_bind_says_why():
    for path in sorted(DEPLOY.rglob("*.yaml")):
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            if WILDCARD.match(line):
                before = [ln.strip() for ln in lines[max(0, i - 3):i]]
                assert any(ln.startswith("#") and "0.0.0.0" in ln for ln in before), \
                    f"{path.relative_to(DEPLOY)}:{i + 1}: binds 0.0.0.0 without a comment saying why"


def test_the_image_serves_http_on_loopback_only():
    baked = yaml.safe_load((DOCKER / "node.yaml").read_text())
    assert baked["http"]["host"] == "127.0.0.1"
    for dockerfile in ("Dockerfile.cpu", "Dockerfile.gpu"):
        text = (DOCKER / dockerfile).read_text()
        assert "DSM_HEALTHCHECK_URL=http://127.0.0.1:8080/healthz" in text  # the check runs inside


def test_compose_redis_requires_a_password():
    compose = (DEPLOY / "compose.yaml").read_text()
    doc = yaml.safe_load(compose)
    redis = doc["services"]["redis"]
    assert "--requirepass" in redis["command"]
    password = redis["command"][redis["command"].index("--requirepass") + 1]
    broker = doc["x-dsm-environment"]["DSM_NODE__EXECUTOR__BROKER_URL"]
    assert broker.startswith("redis://:") and password in broker
    assert redis["environment"]["REDISCLI_AUTH"] == password  # the healthcheck authenticates
