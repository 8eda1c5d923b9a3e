"""dsm-node: a DICOM node that runs the DSM segmentation model on CT studies."""

__version__ = "0.1.0"
