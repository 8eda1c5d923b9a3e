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


def calibration_items(data: str, root: str | None, spacing: float) -> list[dict]:
    """Cases for ``dsm-train calibrate``: phantom:SEED:N[:TUMOURS[:SPACING]] or a dataset list CSV;
    never the real evaluation CTs. Phantom tumour types default to the seen ones, training's
    validation convention, so that no threshold comes from an unseen type (DSM spec, item 11)."""
    from .data import spec_items

    return spec_items(data, root, spacing, tumours="seen", real=False)


def recalibrate_weights(src: Path, dst: Path, data: str, version: str | None = None, root: str | None = None,
                        device: str = "auto") -> tuple[Path, dict]:
    """``src`` with its calibration block measured again on ``data`` (training.calibration.calibrate,
    the end-of-training calibration) and written to ``dst``; the weights are unchanged. For a
    file calibrated by older code, or a site's own validation cases."""
    import numpy as np

    from model.segment import VolumeSegmenter

    from .calibration import calibrate, load_cases
    from .registry import load_registry

    catalog = load_catalog()
    ckpt = load_checkpoint(src)
    seg = VolumeSegmenter.from_checkpoint(ckpt, catalog=catalog, device=device)
    registry = load_registry(catalog=catalog)
    cases = load_cases(calibration_items(data, root, float(np.mean(seg.settings.spacing))), registry)
    calibration = calibrate(seg, cases)
    calibration["data"] = data
    training = dict(ckpt.training)
    from .evaluate import file_sha256

    training["recalibrated_from"] = {"file": Path(src).name, "sha256": file_sha256(Path(src)), "version": ckpt.version,
                                     "calibration": ckpt.calibration}
    model = ckpt.build_model()
    path = save_checkpoint(dst, model, ckpt.class_names, ckpt.embeddings, version or ckpt.version, training,
                           prompt_names=ckpt.prompt_names, calibration=calibration)
    return path, calibration
