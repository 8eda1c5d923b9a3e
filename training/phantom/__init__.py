"""Building blocks of the CT phantom generator.

The public entry point is `training.phantoms` (generate, make_phantom, the writers and the tumour
tables); the modules here are its parts, named for what they paint: `body` (habitus, vertebral
levels, scan protocol, grid), `trunk` (outline, fat, muscle, arms, legs, table), `skeleton`,
`thorax`, `vessels`, `abdomen`, `pelvis`, `lesions`, and `render` (HU per tissue and phase).
Only numpy and scipy are imported: the DICOM node's tests use the generator without torch.
"""
