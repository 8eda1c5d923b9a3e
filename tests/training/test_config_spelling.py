"""Training configs and the phantoms CLI written with the British "tumour" keys still work."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest

from training.config import TrainConfigError, load_train_config

CONFIGS = sorted(Path(__file__).resolve().parents[2].joinpath("config").glob("train_*.yaml"))

NEW = """stage: 2
data: {train: {phantoms: {seed: 3, n: 2, tumors: unseen, spacing: 8.0}}}
crop: {pos: 1.0, neg: 0.0, tumor_prob: 0.7}
optim: {max_steps: 1}
"""


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_use_the_new_keys(path):
    text = path.read_text(encoding="utf-8")
    assert "tumour_prob" not in text and "tumours:" not in text
    load_train_config(path)


def test_old_keys_load_to_the_same_config_with_a_warning(tmp_path, caplog):
    new, old = tmp_path / "new.yaml", tmp_path / "old.yaml"
    new.write_text(NEW)
    old.write_text(NEW.replace("tumors:", "tumours:").replace("tumor_prob:", "tumour_prob:"))
    with caplog.at_level(logging.WARNING, logger="training.config"):
        cfg = load_train_config(old)
    assert cfg == load_train_config(new)
    assert cfg.crop.tumor_prob == 0.7 and cfg.data.train.phantoms.tumors == "unseen"
    said = caplog.text
    assert "crop.tumour_prob is deprecated, use crop.tumor_prob" in said
    assert "data.train.phantoms.tumours is deprecated, use data.train.phantoms.tumors" in said
    # to_dict (what a training state stores) writes the new spelling only
    assert "tumor_prob" in cfg.to_dict()["crop"] and "tumour_prob" not in cfg.to_dict()["crop"]


def test_old_and_new_key_together_is_an_error(tmp_path):
    both = tmp_path / "both.yaml"
    both.write_text(NEW.replace("tumor_prob: 0.7", "tumor_prob: 0.7, tumour_prob: 0.2"))
    with pytest.raises(TrainConfigError, match="crop.tumour_prob and crop.tumor_prob"):
        load_train_config(both)


@pytest.mark.parametrize("option", ["--tumors", "--tumours"])
def test_phantoms_option_old_spelling_is_a_hidden_alias(option, capsys):
    from training.cli import build_parser

    args = build_parser().parse_args(["phantoms", "--out", "x", "--n", "1", option, "seen"])
    assert args.tumors == "seen"
    assert ("deprecated" in capsys.readouterr().err) == (option == "--tumours")
    assert build_parser().parse_args(["phantoms", "--out", "x", "--n", "1"]).tumors == "all"


def test_help_names_only_the_new_option(capsys):
    from training.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["phantoms", "--help"])
    out = capsys.readouterr().out
    assert "--tumors" in out and "--tumours" not in out
