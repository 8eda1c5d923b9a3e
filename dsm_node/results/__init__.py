"""Result encoding: DICOM-SEG (highdicom), TID 1500 SR, measurements, deterministic UIDs."""
