"""DSM model package: class catalog, configuration, network, text embeddings, checkpoints.

Import submodules explicitly (``from model.network import DSMNet``); this package import stays
light (no torch, no MONAI) so that ``model.catalog`` can be used by torch-free code.

    model.catalog     Catalog, ClassEntry, load_catalog            (PyYAML only)
    model.config      ModelConfig, load_model_config
    model.network     DSMNet (Stage 1 / Stage 2), LoadReport
    model.mamba       Mamba (torch / mamba_ssm back ends), selective_scan
    model.text        class_embeddings, ClipTextEncoder, load_default_table
    model.checkpoint  save_checkpoint, load_checkpoint, CheckpointError
    model.inference   Predictor (for MONAI sliding_window_inference)
"""

__version__ = "0.1.0"
