"""Files shipped inside the installed packages (wheel or checkout alike).

The run-time data (class catalog, model configurations, text embeddings, demo weights, the
node's documented defaults, the dataset registry) live inside the ``model``, ``training`` and
``dsm_node`` packages and are found with :mod:`importlib.resources`, never relative to a source
checkout. The repository's top-level ``config/`` and ``weights/`` hold symbolic links to them.
"""
from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def package_file(package: str, *parts: str) -> Path:
    """Filesystem path of ``parts`` inside ``package``.

    Callers need real paths (torch.load, alembic, error messages), so a package imported from a
    zip archive is refused with a clear error rather than extracted to a temporary copy.
    """
    resource = files(package).joinpath(*parts)
    if not isinstance(resource, Path):
        raise RuntimeError(f"{package} is not installed as a folder ({resource!r}); "
                           "install the wheel with pip instead of importing it from an archive")
    return resource
