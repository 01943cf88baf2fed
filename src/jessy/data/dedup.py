"""Duplicate removal: exact (normalized text) first, then embedding near-duplicates."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Sequence
from typing import Any

import numpy as np

from jessy.data.embed import embed


def normalize_prompt(text: str) -> str:
    """Case-, accent-form- and punctuation-insensitive text, for exact matching."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return re.sub(r"[\W_]+", " ", text).strip()


def row_text(row: dict[str, Any]) -> str:
    msgs = row["messages"] if "messages" in row else [*row["prompt"], {"role": "assistant", "content": row["chosen"]}]
    return "\n".join(m["content"] for m in msgs if m["role"] != "system")


def exact_key(row: dict[str, Any]) -> str:
    return hashlib.sha256(normalize_prompt(row_text(row)).encode()).hexdigest()


def dedup(rows: Sequence[dict[str, Any]], threshold: float,
          embeddings: np.ndarray | None = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Keep the first of every exact or near duplicate (cosine >= ``threshold``), in input order.

    Returns (kept rows, dropped rows each with ``duplicate_of`` and ``reason``)."""
    kept_idx: list[int] = []
    dropped: list[dict[str, Any]] = []
    seen: dict[str, str] = {}
    candidates = []
    for i, row in enumerate(rows):
        key = exact_key(row)
        if key in seen:
            dropped.append({**row, "duplicate_of": seen[key], "reason": f"exact duplicate of {seen[key]}"})
        else:
            seen[key] = row["id"]
            candidates.append(i)
    e = embed([row_text(rows[i]) for i in candidates]) if embeddings is None else embeddings[candidates]
    kept_emb = np.zeros((0, e.shape[1]), dtype=np.float32)
    for pos, i in enumerate(candidates):
        if len(kept_emb):
            sims = kept_emb @ e[pos]
            j = int(np.argmax(sims))
            if sims[j] >= threshold:
                other = rows[kept_idx[j]]["id"]
                dropped.append({**rows[i], "duplicate_of": other,
                                "reason": f"near duplicate of {other} (cosine {sims[j]:.3f})"})
                continue
        kept_idx.append(i)
        kept_emb = np.vstack([kept_emb, e[pos:pos + 1]])
    return [rows[i] for i in kept_idx], dropped


def cross_split_near_duplicates(splits: dict[str, Sequence[dict[str, Any]]], threshold: float,
                                vectors: dict[str, np.ndarray]) -> int:
    """How many val/test rows have a near duplicate in train (``vectors``: row id -> embedding)."""
    train = [vectors[r["id"]] for r in splits.get("train", []) if r["id"] in vectors]
    count = 0
    for name in ("val", "test"):
        rows = [vectors[r["id"]] for r in splits.get(name, []) if r["id"] in vectors]
        if rows and train:
            count += int(((np.stack(rows) @ np.stack(train).T).max(axis=1) >= threshold).sum())
    return count
