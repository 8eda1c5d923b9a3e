"""Radiologist's view (issue 9): our SEG and SR opened in OHIF in headless Chromium.

All tests share one viewer session (see conftest.viewer_run); each asserts one part of what a
radiologist sees. The failure messages name the screenshots folder.
"""
from __future__ import annotations

import pytest

from broken_segs import PLAN as BROKEN

# The first test pays for the shared viewer session (fixture viewer_run).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]


def _assert_checks(run, case: str, names: list[str]) -> None:
    r = run.results[case]
    msgs = [f"[{n}] {m}" for n in names for m in r.failures.get(n, [])]
    msgs += [f"[driver] {m}" for m in r.failures.get("driver", [])]
    assert not msgs, (f"{case}: what OHIF showed is wrong (screenshots in {run.artifacts}):\n"
                      + "\n".join(msgs))


def test_our_segments_listed_with_labels_in_catalog_order(viewer_run):
    _assert_checks(viewer_run, "ours", ["panel"])


def test_our_colours_are_the_catalog_colours(viewer_run):
    _assert_checks(viewer_run, "ours", ["colours"])


def test_our_seg_geometry_as_position_based_readers_see_it(viewer_run):
    _assert_checks(viewer_run, "ours", ["seg_file"])


def test_viewer_labelmap_equals_our_label_volume(viewer_run):
    _assert_checks(viewer_run, "ours", ["labelmap"])


def test_each_segment_click_shows_the_organ_where_it_is(viewer_run):
    _assert_checks(viewer_run, "ours", ["segment_views"])
    details = viewer_run.results["ours"].details["segment_views"]
    assert len(details) == len(viewer_run.studies["ours"].truth.segments)


def test_our_sr_loads_in_ohif(viewer_run):
    _assert_checks(viewer_run, "ours", ["sr"])


def test_reference_seg_shows_correctly(viewer_run):
    if "reference_dcmqi_liver" not in viewer_run.results:
        pytest.skip("../shared/data/03 (dcmqi reference SEG) not present")
    _assert_checks(viewer_run, "reference_dcmqi_liver",
                   ["panel", "colours", "seg_file", "labelmap", "segment_views"])


def test_nothing_leaves_loopback(viewer_run):
    assert viewer_run.session.get("interfaces") == ["lo"], viewer_run.session.get("interfaces")
    for case in viewer_run.results:
        _assert_checks(viewer_run, case, ["network"])
    n = sum(len(o.get("requests", [])) for o in viewer_run.session["observations"]["cases"])
    assert n > 50  # the browser did talk (to 127.0.0.1 only)


def test_no_unexpected_console_errors(viewer_run):
    for case in viewer_run.results:
        _assert_checks(viewer_run, case, ["console"])


@pytest.mark.parametrize("variant", sorted(BROKEN))
def test_broken_seg_is_reported(viewer_run, variant):
    """CI fails for a SEG that is flipped, shifted by one slice, mirrored, recoloured or lost
    its labels: the assertion helper reports it, through the checks expected to see it."""
    r = viewer_run.results[f"broken_{variant}"]
    assert not r.failures.get("driver"), r.failures["driver"]
    assert not r.ok, f"broken SEG ({variant}) passed all viewer checks"
    missed = [c for c in BROKEN[variant]["expect"] if not r.failures.get(c)]
    assert not missed, (f"broken SEG ({variant}) not reported by {missed}; "
                        f"reported: {r.summary()}")
