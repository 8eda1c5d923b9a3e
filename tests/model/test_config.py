from __future__ import annotations

import pytest
import yaml

from model.config import ConfigError, ModelConfig, load_model_config


def test_paper_config_matches_the_spec():
    cfg = load_model_config("paper")
    assert cfg.backbone.feature_size == 48
    assert cfg.backbone.depths == (2, 2, 2, 2) and cfg.backbone.num_heads == (3, 6, 12, 24)
    assert cfg.decoder.query_dim == 256 and cfg.decoder.pixel_dim == 128 and cfg.decoder.num_heads == 8
    assert (cfg.decoder.n_organ_queries, cfg.decoder.n_tumor_queries) == (25, 20)
    assert (cfg.ssm.d_state, cfg.ssm.d_conv, cfg.ssm.expand) == (16, 4, 2)
    assert cfg.text.tau == 0.01 and cfg.text.dim == 512
    p = cfg.preprocessing
    assert p.roi_size == (96, 96, 96) and p.spacing == (1.5, 1.5, 1.5) and p.hu_window == (-175.0, 250.0)
    assert p.orientation == "RAS"
    assert cfg.stage == 2 and cfg.n_queries == 45 and cfg.with_stage(1).n_queries == 25


def test_small_config_is_smaller_and_roundtrips():
    small = load_model_config("small")
    assert small.preprocessing.roi_size == (64, 64, 64) and small.backbone.feature_size <= 24
    assert ModelConfig.from_dict(small.to_dict()) == small
    assert yaml.safe_load(yaml.safe_dump(small.to_dict())) == small.to_dict()  # plain data only
    assert "backbone.feature_size: 24 != 48" in small.diff(load_model_config("paper"))


def test_replace_with_dotted_keys():
    cfg = load_model_config("small").replace(stage=1, **{"ssm.backend": "torch", "dqr.steps": 3})
    assert (cfg.stage, cfg.ssm.backend, cfg.dqr.steps) == (1, "torch", 3)
    with pytest.raises(ConfigError, match="unknown config key 'ssm.bakend'"):
        cfg.replace(**{"ssm.bakend": "torch"})


@pytest.mark.parametrize(
    "change, needle",
    [
        ({"ssm": {"backend": "cuda"}}, "ssm.backend"),
        ({"stage": 3}, "stage must be 1 or 2"),
        ({"backbone": {"feature_size": 20}}, "divisible by 12"),
        ({"preprocessing": {"roi_size": [96, 96, 80]}}, "multiples of 32"),
        ({"decoder": {"querydim": 3}}, "unknown key(s) ['decoder.querydim']"),
    ],
)
def test_invalid_configs_are_explained(tmp_path, change, needle):
    data = load_model_config("small").to_dict()
    for key, value in change.items():
        if isinstance(value, dict):
            data[key].update(value)
        else:
            data[key] = value
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as err:
        load_model_config(path)
    assert needle in str(err.value)


def test_unknown_name_lists_known_ones():
    with pytest.raises(ConfigError, match=r"known names: \['paper', 'small'\]"):
        load_model_config("huge")
