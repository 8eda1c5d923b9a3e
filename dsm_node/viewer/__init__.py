"""The radiologist's view: the node's SEG/SR in the OHIF web viewer, offline.

Orthanc (DICOMweb) + a same-origin server for the prebuilt OHIF app + (in tests) headless
Chromium, all on 127.0.0.1. See docs/viewer.md; ``dsm-node view`` is :mod:`.command`.
"""
