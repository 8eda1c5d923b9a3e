"""Release a trained checkpoint (e.g. weights/dsm-small-demo.pt), or turn a training state
(``<out_dir>/checkpoints/step_*.pt``) into a model checkpoint, e.g. to evaluate two runs at the
same step."""
from __future__ import annotations

from pathlib import Path

from model.catalog import load_catalog
from model.checkpoint import load_checkpoint, save_checkpoint
from model.config import ModelConfig
from model.network import DSMNet
from model.text import class_embeddings


def export_weights(src: Path, dst: Path, version: str | None = None, half: bool = False,
                   labelled_datasets: list[str] | None = None) -> Path:
    """Re-write a model checkpoint (or a training state) under a release version; half stores
    float weights as fp16 (they are cast back to the model's float32 on load).

    ``labelled_datasets``: registry datasets that trained these weights (both stages), for a file
    written before ``training.labelled`` was recorded: the classes they label become
    ``training.labelled`` (model.segment draws no other organ class). A file that records it
    keeps its own, and naming datasets for it is an error (the record would be replaced)."""
    from .trainer import STATE_FORMAT, load_payload

    catalog = load_catalog()
    payload = load_payload(Path(src), trust_legacy=False)
    if isinstance(payload, dict) and payload.get("format") == STATE_FORMAT:
        model, names, embeddings, prompts, training, calibration, default_version = _from_state(payload, src, catalog)
    else:
        ckpt = load_checkpoint(src)
        model = ckpt.build_model()
        names, embeddings, prompts = ckpt.class_names, ckpt.embeddings, ckpt.prompt_names
        training, calibration, default_version = dict(ckpt.training), ckpt.calibration, ckpt.version
    if labelled_datasets:
        if training.get("labelled") is not None:
            raise ValueError(f"{src} records its labelled classes already ({len(training['labelled'])}); "
                             "--labelled-datasets is for files from before that record")
        from .registry import load_registry

        registry = load_registry(catalog=catalog)
        training["labelled"] = sorted(registry.annotated_by(labelled_datasets))
        training["labelled_declared_from"] = list(labelled_datasets)
    if half:
        model = model.half()
    if names != catalog.names[: len(names)]:
        raise ValueError(f"{src}: class order differs from the catalog")
    training["exported_from"] = str(src)
    training["weights_dtype"] = "float16" if half else "float32"
    return save_checkpoint(dst, model, names, embeddings, version or default_version, training,
                           prompt_names=prompts, calibration=calibration)


def _from_state(payload: dict, src: Path, catalog) -> tuple:
    """Model, class names, embeddings, prompts, training summary, calibration, version of a
    training state (no calibration: that runs at the end of training)."""
    from .registry import load_registry

    cfg = ModelConfig.from_dict(payload["model_config"])
    model = DSMNet(cfg)
    model.load_state_dict(payload["model"])
    embeddings = class_embeddings(catalog)
    if cfg.stage == 2:
        model.set_text_embeddings(embeddings)
    train_cfg = payload.get("config", {})
    seen: list[str] = []
    phantoms = ((train_cfg.get("data") or {}).get("train") or {}).get("phantoms")
    if cfg.stage == 2 and phantoms:
        registry = load_registry(catalog=catalog)
        seen = sorted(c for c in registry.annotated_by([phantoms["dataset"]]) if catalog.by_name(c).is_tumor)
    training = {"stage": cfg.stage, "steps": int(payload["step"]), "seen_tumors": seen,
                "labelled": payload.get("labelled"),
                "note": "exported from a training state, before the end-of-training calibration"}
    version = f"{(train_cfg.get('run') or {}).get('version', 'dsm-train')}-step{int(payload['step'])}"
    return model.eval(), catalog.names, embeddings, catalog.prompt_names, training, {}, version
