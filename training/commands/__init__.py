"""The ``dsm-train`` sub-commands, one module each (see training/cli.py)."""
