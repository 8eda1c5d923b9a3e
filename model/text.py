"""CLIP text embeddings of class prompts: the shipped table, or a local open_clip checkpoint.

Nothing here touches the network: open_clip models are created with ``pretrained=None`` and
their weights read from a file the user names (``--clip-checkpoint``).
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .catalog import PROMPT_TEMPLATE, Catalog, ClassEntry

DATA_DIR = Path(__file__).resolve().parent / "data"
DEFAULT_TABLE_PATH = DATA_DIR / "clip_vitb32_dsm45.pt"
DEFAULT_TABLE_INDEX = DATA_DIR / "clip_vitb32_dsm45.json"
DEFAULT_CLIP_MODEL = "ViT-B-32"
CACHE_ENV = "DSM_TEXT_CACHE"


class MissingEmbeddingError(LookupError):
    """A class has no text embedding in the table and no CLIP checkpoint was given."""


@dataclass(frozen=True)
class EmbeddingTable:
    """Rows of L2-normalised text embeddings, addressed by the prompt name they encode."""

    prompt_names: tuple[str, ...]
    embeddings: Tensor  # (K, dim) float32, unit rows
    source: str

    def __post_init__(self) -> None:
        if self.embeddings.dim() != 2 or self.embeddings.shape[0] != len(self.prompt_names):
            raise ValueError(
                f"{self.source}: {len(self.prompt_names)} names but embeddings of shape {tuple(self.embeddings.shape)}"
            )

    def get(self, prompt_name: str) -> Tensor | None:
        try:
            return self.embeddings[self.prompt_names.index(prompt_name)]
        except ValueError:
            return None


def load_default_table() -> EmbeddingTable:
    """The DSM authors' CLIP ViT-B/32 table for the 45 classes (CC BY 4.0; see data/README.md)."""
    index = json.loads(DEFAULT_TABLE_INDEX.read_text(encoding="utf-8"))
    raw = torch.load(DEFAULT_TABLE_PATH, map_location="cpu", weights_only=True)
    return EmbeddingTable(tuple(index["prompt_names"]), F.normalize(raw.float(), dim=-1), str(DEFAULT_TABLE_PATH))


def embeddings_sha256(embeddings: Tensor) -> str:
    """Fingerprint of a class-embedding table (float32, row-major bytes)."""
    data = embeddings.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: str | Path, block: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(block):
            digest.update(chunk)
    return digest.hexdigest()


class ClipTextEncoder:
    """open_clip text encoder with weights from a LOCAL checkpoint and an on-disk cache.

    The cache is keyed by (model name, checkpoint sha256, prompt), so a different checkpoint or
    model never returns stale rows. OpenAI TorchScript archives (``ViT-B-32.pt``) are accepted
    too; they carry their own architecture (QuickGELU), whatever ``model_name`` says.
    """

    def __init__(
        self, checkpoint: str | Path, model_name: str = DEFAULT_CLIP_MODEL, cache_dir: str | Path | None = None
    ) -> None:
        self.checkpoint = Path(checkpoint)
        if not self.checkpoint.is_file():
            raise FileNotFoundError(f"CLIP checkpoint {self.checkpoint} does not exist")
        self.model_name = model_name
        self.checkpoint_sha256 = file_sha256(self.checkpoint)
        cache_root = Path(cache_dir or os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "dsm-node" / "clip-text")
        key = hashlib.sha256(f"{model_name}\0{self.checkpoint_sha256}".encode()).hexdigest()[:24]
        self.cache_path = cache_root / f"{key}.pt"
        self._model = None
        self._tokenizer = None

    def encode(self, prompt_names: Sequence[str], template: str = PROMPT_TEMPLATE) -> Tensor:
        """(len(prompt_names), dim) L2-normalised embeddings of ``template.format(name=...)``."""
        prompts = [template.format(name=n) for n in prompt_names]
        cache = self._read_cache()
        todo = sorted({p for p in prompts if p not in cache})
        if todo:
            model, tokenizer = self._load()
            with torch.no_grad():
                encoded = F.normalize(model.encode_text(tokenizer(todo)).float(), dim=-1)
            cache.update(zip(todo, encoded))
            self._write_cache(cache)
        return torch.stack([cache[p] for p in prompts])

    def _load(self) -> tuple[Any, Any]:  # open_clip's model and tokenizer (no type information)
        if self._model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            import open_clip

            if _is_torchscript(self.checkpoint):
                model = open_clip.load_openai_model(str(self.checkpoint), precision="fp32", device="cpu")
            else:
                model = open_clip.create_model(self.model_name, pretrained=None)
                open_clip.load_checkpoint(model, str(self.checkpoint), strict=True, weights_only=True)
            self._model = model.eval()
            self._tokenizer = open_clip.get_tokenizer(self.model_name)
        return self._model, self._tokenizer

    def _read_cache(self) -> dict[str, Tensor]:
        if not self.cache_path.exists():
            return {}
        try:
            data = torch.load(self.cache_path, map_location="cpu", weights_only=True)
        except Exception:  # a corrupt cache is recomputed, never trusted
            return {}
        return dict(data) if isinstance(data, dict) else {}

    def _write_cache(self, cache: dict[str, Tensor]) -> None:
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.cache_path.parent, suffix=".tmp")
        os.close(fd)
        try:
            torch.save({k: v.clone() for k, v in cache.items()}, tmp)
            os.replace(tmp, self.cache_path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


def _is_torchscript(path: Path) -> bool:
    """OpenAI's CLIP releases are TorchScript zip archives (they contain a ``code/`` folder)."""
    import zipfile

    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any("/code/" in name for name in zf.namelist())


def class_embeddings(
    classes: Catalog | Iterable[ClassEntry | str],
    clip_checkpoint: str | Path | None = None,
    model_name: str = DEFAULT_CLIP_MODEL,
    table: EmbeddingTable | None = None,
    cache_dir: str | Path | None = None,
) -> Tensor:
    """(K, dim) L2-normalised embeddings, one per class, in the given order.

    Classes are looked up by prompt name in ``table`` (default: the shipped 45-class table);
    names the table lacks are encoded with the CLIP checkpoint, if one is given.
    """
    names = [c.prompt_name if isinstance(c, ClassEntry) else str(c) for c in classes]
    table = table if table is not None else load_default_table()
    rows: list[Tensor | None] = [table.get(n) for n in names]
    missing = [n for n, r in zip(names, rows) if r is None]
    if missing:
        if clip_checkpoint is None:
            raise MissingEmbeddingError(
                f"no text embedding for class(es) {missing}: the table {table.source} covers only "
                f"{len(table.prompt_names)} known classes. Give a local open_clip {model_name} checkpoint "
                "(--clip-checkpoint PATH) to encode new class names."
            )
        encoded = dict(zip(missing, ClipTextEncoder(clip_checkpoint, model_name, cache_dir).encode(missing)))
        rows = [r if r is not None else encoded[n] for n, r in zip(names, rows)]
    return torch.stack(rows)  # type: ignore[arg-type]
