"""Tiny Stage-1 and Stage-2 runs: checkpoints, exact resume, released weights, Mamba gradients."""
from __future__ import annotations

import csv

import pytest
import torch

from model.checkpoint import load_checkpoint
from model.config import load_model_config
from model.network import build_model
from tests.training.training_helpers import TINY_MODEL
from training.config import load_train_config
from training.losses import dsm_loss
from training.registry import load_registry
from training.trainer import STATE_FORMAT, Trainer, lr_lambda


def _rows(path):
    return list(csv.DictReader(path.open()))


def _weights(path):
    return load_checkpoint(path).state_dict


def test_lr_schedule_warmup_then_cosine():
    f = lr_lambda(total=10, warmup=2, min_ratio=0.1)
    assert [round(f(s), 4) for s in (0, 1)] == [0.5, 1.0]
    assert f(2) == pytest.approx(1.0) and f(10) == pytest.approx(0.1) and f(6) == pytest.approx(0.55)


def test_stage1_then_stage2_resume_exactly(tiny, tmp_path):
    # Uninterrupted Stage 1: 2 optimizer steps of 2 accumulated micro-batches (3 training cases,
    # so the second step spans the epoch boundary).
    full = Trainer(load_train_config(tiny(1, "s1_full", 2)), resume=False).run()
    assert full["finished"] and full["steps"] == 2
    # Interrupted after step 1, then resumed from the saved state.
    cfg = load_train_config(tiny(1, "s1_split", 2))
    first = Trainer(cfg, resume=True, stop_after=1).run()
    assert not first["finished"]
    state = torch.load(tmp_path / "s1_split" / "checkpoints" / "last.pt", weights_only=False)
    assert state["format"] == STATE_FORMAT and state["step"] == 1
    assert {"model", "optimizer", "scheduler", "scaler", "rng", "epoch", "mb_in_epoch"} <= set(state)
    resumed = Trainer(cfg, resume=True).run()
    assert resumed["finished"]
    a, b = _weights(tmp_path / "s1_full" / "final.pt"), _weights(tmp_path / "s1_split" / "final.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert 0.7 < float(a["organ_queries"].std()) < 1.3  # init_query_std: 1.0 (the model's own is 0.02)
    ra, rb = _rows(tmp_path / "s1_full" / "metrics.csv"), _rows(tmp_path / "s1_split" / "metrics.csv")
    assert [r["loss"] for r in ra] == [r["loss"] for r in rb] and len(ra) == 2
    assert ra[-1]["val_dice"] != ""  # validation ran at the last step
    assert (tmp_path / "s1_full" / "curves.png").stat().st_size > 1000
    ck = load_checkpoint(tmp_path / "s1_full" / "final.pt")
    assert ck.config.stage == 1 and ck.training["steps"] == 2 and ck.version == "test-stage1"
    registry = load_registry()
    # the classes its training set labels (no init): phantom_organs labels no tumour
    assert ck.labelled == sorted(registry["phantom_organs"].annotated)
    assert "Celiac Trunk" not in ck.labelled and "Liver Tumor" not in ck.labelled
    assert load_checkpoint(tmp_path / "s1_split" / "final.pt").labelled == ck.labelled  # kept over resume

    # Stage 2 from the Stage-1 weights: same exactness, shared weights start from Stage 1.
    init = tmp_path / "s1_full" / "final.pt"
    s2 = Trainer(load_train_config(tiny(2, "s2_full", 2)), init=init, resume=False).run()
    cfg2 = load_train_config(tiny(2, "s2_split", 2))
    Trainer(cfg2, init=init, resume=True, stop_after=1).run()
    Trainer(cfg2, init=init, resume=True).run()
    a, b = _weights(tmp_path / "s2_full" / "final.pt"), _weights(tmp_path / "s2_split" / "final.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    ck2 = load_checkpoint(tmp_path / "s2_full" / "final.pt")
    assert ck2.config.stage == 2 and s2["seen_tumors"] == ["Kidney Cyst", "Kidney Tumor", "Liver Tumor"]
    # the init's record and this run's set (phantom_seen adds the seen tumours)
    assert ck2.labelled == sorted(set(ck.labelled) | set(registry["phantom_seen"].annotated))
    assert "Liver Tumor" in ck2.labelled and "Celiac Trunk" not in ck2.labelled
    assert load_checkpoint(tmp_path / "s2_split" / "final.pt").labelled == ck2.labelled
    assert any(k.startswith("tumor_queries") for k in ck2.state_dict)
    s1 = _weights(init)
    # Shared weights start from Stage 1 (two small steps later they are close, not re-drawn).
    assert float((ck2.state_dict["organ_queries"] - s1["organ_queries"]).abs().max()) < 0.1
    assert 0.7 < float(ck2.state_dict["tumor_queries"].std()) < 1.3


def test_time_budget_shortens_the_schedule_and_survives_resume(tiny, tmp_path):
    # A budget already spent when the first steps have been timed (steps 3..13): training stops
    # one step later, with the cosine schedule re-planned to end there.
    cfg = load_train_config(tiny(1, "budget", 500, **{"optim.grad_accum": 1, "run.val_every": 1000}))
    out = Trainer(cfg, resume=False, time_budget_s=0.001).run()
    assert out["finished"] and out["steps"] == 14 and out["total_steps"] == 14
    state = torch.load(tmp_path / "budget" / "checkpoints" / "last.pt", weights_only=False)
    assert state["total_steps"] == 14
    rows = _rows(tmp_path / "budget" / "metrics.csv")
    assert float(rows[-1]["lr"]) == pytest.approx(1e-3 * lr_lambda(14, 1, cfg.optim.min_lr_ratio)(13))
    # Resuming the shortened run keeps its 14-step schedule instead of the config's 500.
    again = Trainer(cfg, resume=True).run()
    assert again["finished"] and again["total_steps"] == 14


def test_mamba_parameters_learn_through_deep_supervision():
    cfg = load_model_config("small").replace(**TINY_MODEL).with_stage(1)
    torch.manual_seed(0)
    net = build_model(cfg)
    x = torch.rand(1, 1, 64, 32, 32)
    label = torch.zeros(1, 2, 64, 32, 32, dtype=torch.uint8)
    label[0, 0, 10:40, 5:25, 5:20] = 6
    ann = torch.zeros(1, 45, dtype=torch.bool)
    ann[0, :25] = True
    loss, _ = dsm_loss(net(x), label, ann, 45, stage=1)
    loss.backward()
    ssm = {n: p.grad for n, p in net.named_parameters() if ".ssm." in n}
    assert ssm and all(g is not None for g in ssm.values())
    assert sum(float(g.abs().sum()) for g in ssm.values()) > 0


def test_config_errors(tmp_path):
    from training.config import TrainConfigError

    p = tmp_path / "c.yaml"
    p.write_text("stage: 1\noptim: {max_steps: 3, epochs: 2}\n")
    with pytest.raises(TrainConfigError, match="exactly one"):
        load_train_config(p)
    p.write_text("stage: 1\noptim: {max_steps: 3}\nbogus: 1\n")
    with pytest.raises(TrainConfigError, match="bogus"):
        load_train_config(p)


def test_a_training_state_exports_as_a_model_checkpoint(tiny, tmp_path):
    from training.export import export_weights

    cfg = load_train_config(tiny(2, "s2_state", 2))
    Trainer(cfg, resume=False, stop_after=1).run()
    state = tmp_path / "s2_state" / "checkpoints" / "last.pt"
    out = export_weights(state, tmp_path / "step1.pt")
    ck = load_checkpoint(out)
    assert ck.config.stage == 2 and ck.training["steps"] == 1 and ck.version == "test-stage2-step1"
    assert ck.training["seen_tumors"] == ["Kidney Cyst", "Kidney Tumor", "Liver Tumor"]
    assert ck.calibration == {}
    raw = torch.load(state, map_location="cpu", weights_only=True)["model"]
    assert all(torch.equal(ck.state_dict[k], raw[k]) for k in raw)
    # no init: what its training set labels; a run from an init that does not record it: None
    assert ck.labelled == sorted(load_registry()["phantom_seen"].annotated)
    legacy = tmp_path / "legacy_init.pt"
    torch.save({"format": STATE_FORMAT, "model": raw}, legacy)
    Trainer(load_train_config(tiny(2, "s2_legacy", 1)), init=legacy, resume=False).run()
    old = load_checkpoint(tmp_path / "s2_legacy" / "final.pt")
    assert old.labelled is None
    with pytest.raises(ValueError, match="records its labelled classes already"):
        export_weights(out, tmp_path / "again.pt", labelled_datasets=["phantom_organs"])
    # declared for a file from before the record (dsm-train export --labelled-datasets)
    declared = load_checkpoint(export_weights(tmp_path / "s2_legacy" / "final.pt", tmp_path / "declared.pt",
                                              labelled_datasets=["phantom_seen"]))
    assert declared.labelled == ck.labelled and declared.training["labelled_declared_from"] == ["phantom_seen"]


def test_lr_mult_gives_prefixes_their_own_learning_rate(tiny, tmp_path):
    # optim.lr_mult: a factor 0 holds the backbone (in the optimizer, yet unchanged), the rest
    # trains at lr; the groups carry lr x factor; an unknown prefix is an error.
    cfg = load_train_config(tiny(1, "mult", 2, **{"optim.lr_mult": {"backbone": 0.0, "backbone.no_such": 5.0}}))
    with pytest.raises(ValueError, match="backbone.no_such"):
        Trainer(cfg, resume=False).build()
    cfg = load_train_config(tiny(1, "mult", 2, **{"optim.lr_mult": {"backbone": 0.0}}))
    start = Trainer(cfg, resume=False)
    start.build()
    assert sorted(g["lr"] for g in start.optimizer.param_groups) == [0.0, cfg.optim.lr]
    fresh = {k: v.detach().clone() for k, v in start.net.state_dict().items()}
    Trainer(cfg, resume=False).run()
    after = _weights(tmp_path / "mult" / "final.pt")
    moved = {name.split(".")[0] for name, value in after.items()
             if value.is_floating_point() and not torch.equal(value, fresh[name])}
    assert "backbone" not in moved and moved, moved


def test_frozen_modules_keep_their_weights(tiny, tmp_path):
    # A Stage-2 warm-up of the fresh tumour modules on fixed features: what optim.freeze names
    # stays bit-identical, the rest learns; a name that matches no parameter is an error.
    init = tmp_path / "s1" / "final.pt"
    Trainer(load_train_config(tiny(1, "s1", 1)), resume=False).run()
    frozen = ["backbone", "pixel_proj", "organ_queries", "kmmm"]
    cfg = load_train_config(tiny(2, "warm", 2, **{"optim.freeze": frozen}))
    start = Trainer(cfg, init=init, resume=False)
    start.build()  # the weights before the first step (run() builds the same from the seed)
    fresh = {k: v.detach().clone() for k, v in start.net.state_dict().items()}
    Trainer(cfg, init=init, resume=False).run()
    before, after = _weights(init), _weights(tmp_path / "warm" / "final.pt")
    for name, value in after.items():
        if name.split(".")[0] in frozen:
            assert torch.equal(value, before[name]), name
    for name in ("tumor_queries", "tumor_mask_bias"):  # trained: moved in two steps
        assert not torch.equal(after[name], fresh[name]), name
    bad = load_train_config(tiny(2, "bad", 1, **{"optim.freeze": ["backbone", "no_such_module"]}))
    with pytest.raises(ValueError, match="no_such_module"):
        Trainer(bad, init=init, resume=False).run()


def test_init_exclude_starts_the_named_modules_fresh(tiny, tmp_path):
    """Stage 2 again from a Stage-2 file's organ side (`init_exclude`): the named weights are not
    loaded, everything else is; a prefix the init does not have is an error."""
    Trainer(load_train_config(tiny(2, "s2_first", 1)), resume=False).run()
    first = tmp_path / "s2_first" / "final.pt"
    tumor_side = ["tumor_queries", "tumor_mask_bias", "interaction", "class_proj"]
    cfg = load_train_config(tiny(2, "s2_again", 1, init_exclude=tumor_side, align_class_steps=0))
    trainer = Trainer(cfg, init=first, resume=False)
    trainer.build()  # built, not run: the weights it starts from
    a, b = _weights(first), trainer.net.state_dict()
    assert torch.equal(a["organ_queries"], b["organ_queries"])
    assert all(torch.equal(a[k], b[k]) for k in a if k.startswith("backbone."))
    assert not torch.equal(a["tumor_queries"], b["tumor_queries"])  # drawn afresh
    bad = load_train_config(tiny(2, "s2_bad", 1, init_exclude=["no_such_module"]))
    with pytest.raises(ValueError, match="no_such_module"):
        Trainer(bad, init=first, resume=False).build()
