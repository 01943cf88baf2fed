"""Informativeness selection (SIFT-style): rows the current model finds hard, minus redundancy.

Each row's score is its per-token loss under the current model (z-scored), and a row already
close to one selected before is penalized by ``diversity_weight`` x its highest cosine to the
selection. Greedy: the next pick always has the best penalized score.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from jessy.data.dedup import row_text
from jessy.data.embed import embed
from jessy.data.template import IGNORE_INDEX, encode_truncated, with_system


def per_example_loss(model: Any, tokenizer: Any, rows: Sequence[dict[str, Any]], system_prompt: str | None,
                     max_seq_length: int) -> np.ndarray:
    """Mean cross-entropy over each row's trained (assistant) tokens."""
    import torch

    losses = []
    model.eval()
    device = next(model.parameters()).device
    with torch.no_grad():
        for row in rows:
            enc = encode_truncated(tokenizer, with_system(row["messages"], system_prompt), max_seq_length)
            ids = torch.tensor([enc["input_ids"]], device=device)
            labels = torch.tensor([enc["labels"]], device=device)
            if (labels != IGNORE_INDEX).sum() == 0:
                losses.append(0.0)
                continue
            losses.append(float(model(input_ids=ids, labels=labels).loss))
    return np.array(losses, dtype=np.float64)


def sift_select(losses: np.ndarray, embeddings: np.ndarray, n: int, diversity_weight: float = 0.3) -> list[int]:
    """Indices of ``n`` rows, most informative first."""
    n = min(n, len(losses))
    z = (losses - losses.mean()) / (losses.std() + 1e-9)
    best_sim = np.full(len(losses), -1.0)
    chosen: list[int] = []
    available = np.ones(len(losses), dtype=bool)
    for _ in range(n):
        score = z - diversity_weight * np.maximum(best_sim, 0.0)
        score[~available] = -np.inf
        i = int(np.argmax(score))
        chosen.append(i)
        available[i] = False
        best_sim = np.maximum(best_sim, embeddings @ embeddings[i])
    return chosen


def select_informative(model: Any, tokenizer: Any, rows: Sequence[dict[str, Any]], n: int,
                       system_prompt: str | None, max_seq_length: int,
                       diversity_weight: float = 0.3) -> list[dict[str, Any]]:
    losses = per_example_loss(model, tokenizer, rows, system_prompt, max_seq_length)
    order = sift_select(losses, embed([row_text(r) for r in rows]), n, diversity_weight)
    return [{**rows[i], "metadata": {**rows[i]["metadata"], "sift_loss": round(float(losses[i]), 4)}}
            for i in order]
