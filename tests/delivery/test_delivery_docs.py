"""docs/delivery.md states the delivery defaults and what they mean for an outage; the figures
come from the settings schema (the reported defect: the page said 10 attempts and that a PACS
down for an hour dead-letters its results, while the default was 12 and spans more than an hour)."""
from __future__ import annotations

import re

import yaml

from dsm_node.delivery.outbox import JITTER, retry_waits
from dsm_node.delivery.service import lease_seconds
from dsm_node.settings import Delivery, Settings
from tests.tools import REPO

DOC = (REPO / "docs" / "delivery.md").read_text()


def test_configuration_block_shows_the_schema_defaults():
    block = DOC.split("## Configuration", 1)[1].split("```yaml", 1)[1].split("```", 1)[0]
    documented = yaml.safe_load(block)["delivery"]
    defaults = Settings().delivery
    for key in ("reply_to_caller", "calling_ae_title", "max_attempts", "backoff_initial_s", "backoff_max_s", "timeout_s"):
        assert documented[key] == getattr(defaults, key), key


def test_retry_schedule_and_outage_figures_follow_from_the_defaults():
    d = Settings().delivery
    waits = retry_waits(d.max_attempts, d.backoff_initial_s, d.backoff_max_s)
    shown = ", ".join(f"{w:g}" for w in waits)
    assert (f"With the defaults ({d.backoff_initial_s:g} s doubling to {d.backoff_max_s:g} s, {d.max_attempts} attempts), "
            f"the waits\nare {shown} s.") in DOC
    low, high = round(sum(waits) * (1 - JITTER) / 60), round(sum(waits) / 60)
    assert f"**{low}–{high} minutes** after the first" in DOC
    assert f"down for up to about an hour ({low} minutes at\nleast) gets its results without anyone acting" in DOC
    assert sum(waits) * (1 - JITTER) > 3600  # what the settings description promises
    assert "more than an hour" in Delivery.model_fields["max_attempts"].description
    step = d.backoff_max_s / 60
    assert f"adds\n{round(step * (1 - JITTER))}–{round(step)} minutes" in DOC
    assert re.search(rf"`4 × timeout_s \+ 60 s` \({round(lease_seconds(d.timeout_s) / 60)} minutes with the defaults\)", DOC)
