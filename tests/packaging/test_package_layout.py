"""One copy of each run-time file: it lives inside a package (so the wheel ships it) and the
repository's config/ and weights/ hold symbolic links to it. Fast checks of the layout; the
wheel itself is exercised by test_wheel_install.py."""
from __future__ import annotations

import fnmatch
from pathlib import Path

import pytest

from tests.tools import REPO

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

PACKAGES = ("dsm_node", "model", "training")


def _package_data() -> dict[str, list[str]]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]


def test_links_point_into_shipped_package_data():
    data = _package_data()
    links = [p for folder in ("config", "weights") for p in sorted((REPO / folder).iterdir()) if p.is_symlink()]
    assert {p.name for p in links} >= {"node.yaml", "classes.yaml", "datasets.yaml", "model_small.yaml",
                                        "model_paper.yaml", "dsm-small-demo.pt", "MODEL_CARD.md"}
    for link in links:
        target = link.resolve()
        assert target.is_file(), f"{link} is a broken link"
        package, *inside = target.relative_to(REPO).parts
        assert package in PACKAGES, f"{link} -> {target}: not inside a package"
        relative = "/".join(inside)
        assert any(fnmatch.fnmatch(relative, pattern) for pattern in data[package]), \
            f"{link} -> {target}: not matched by [tool.setuptools.package-data] {package}"


def test_only_training_recipes_are_plain_files_at_the_top():
    # The training configurations are read by path (dsm-train --config FILE), not at run time.
    plain = sorted(p.name for folder in ("config", "weights") for p in (REPO / folder).iterdir()
                   if not p.is_symlink())
    assert all(fnmatch.fnmatch(name, "train_*.yaml") for name in plain), plain


def test_package_data_globs_match_files():
    for package, patterns in _package_data().items():
        for pattern in patterns:
            assert list((REPO / package).glob(pattern)), f"{package}: {pattern!r} matches nothing"


def test_test_folders_do_not_shadow_the_packages():
    # tests/ is a package, so tests/training is `tests.training`: under pytest `training` (and
    # its importlib.resources data) must still be the project's package, not a test folder.
    from importlib.resources import files

    import training

    assert Path(training.__file__).resolve().parent == REPO / "training"
    assert Path(str(files("training") / "configs" / "datasets.yaml")).resolve().is_file()
    assert Path(str(files("training"))).resolve() == REPO / "training"
