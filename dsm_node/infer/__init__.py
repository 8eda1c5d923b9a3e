"""Inference: preprocessing from the checkpoint, sliding-window DSM, post-processing, and the
way back to the source grid. Imports ``model`` (for inference only)."""
