"""Composition balancing (30/25/20/15/10 by default) and per-stage data mixes.

Balancing only removes rows: every category is cut to its share of the largest total the
scarcest category allows, hand-written rows kept before generated and augmented ones. A stage mix
draws from named pools (a category, or a source such as ``general_dialogue`` or ``constitution``);
a pool that is empty gives its share to the others, and the report says so.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

SOURCE_ORDER = {"seed": 0, None: 0, "user": 0, "constitution": 1, "generated": 2, "augmented": 3}


def _category(row: dict[str, Any]) -> str | None:
    return row["metadata"].get("category")


def balance_composition(rows: Sequence[dict[str, Any]], composition: dict[str, float], tolerance: float,
                        seed: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Rows whose category shares are each within ``tolerance`` of ``composition``."""
    counts = Counter(_category(r) for r in rows)
    missing = sorted(c for c, s in composition.items() if s > 0 and not counts[c])
    present = {c: s for c, s in composition.items() if s > 0 and counts[c]}
    norm = sum(present.values()) or 1.0
    targets = {c: s / norm for c, s in present.items()}  # categories with no rows cannot be balanced towards
    before = {c: counts[c] for c in targets}
    total = sum(before.values())
    report: dict[str, Any] = {"before": before, "target": {c: composition[c] for c in targets},
                              "missing": missing, "tolerance": tolerance}
    if not total:
        return list(rows), {**report, "after": before, "how": "no categorized rows", "max_gap": None}

    def gap(c: dict[str, int]) -> float:
        t = sum(c.values())
        return max(abs(c[k] / t - s) for k, s in targets.items()) if t else 1.0

    if gap(before) <= tolerance:
        return list(rows), {**report, "after": before, "how": "already within tolerance",
                            "max_gap": round(gap(before), 4)}
    scale = min(before[c] / s for c, s in targets.items())
    keep = {c: min(before[c], int(round(scale * s))) for c, s in targets.items()}
    rng = random.Random(seed)
    by_cat: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_cat[_category(r)].append(r)
    out = [r for r in rows if _category(r) not in targets]  # uncategorized rows are not composition rows
    for c in targets:
        pool = by_cat[c][:]
        rng.shuffle(pool)
        pool.sort(key=lambda r: SOURCE_ORDER.get(r["metadata"].get("source"), 1))
        out += pool[: keep[c]]
    after = {c: keep[c] for c in targets}
    cut = {c: before[c] - keep[c] for c in targets if before[c] > keep[c]}
    how = "downsampled " + ", ".join(f"{c} by {n}" for c, n in cut.items()) + \
          f" (scarcest category limits the total to {sum(after.values())})"
    return out, {**report, "after": after, "how": how, "max_gap": round(gap(after), 4)}


def stage_mix(pools: dict[str, Sequence[dict[str, Any]]], mix: dict[str, float], seed: int,
              total: int | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Draw a stage's rows from named pools in the given shares (with replacement only when a
    pool is smaller than its share of an explicit ``total``)."""
    available = {k: s for k, s in mix.items() if s > 0 and pools.get(k)}
    missing = sorted(k for k, s in mix.items() if s > 0 and not pools.get(k))
    if not available:
        raise ValueError(f"no data for any pool of the mix {mix}; missing: {missing}")
    norm = sum(available.values())
    shares = {k: s / norm for k, s in available.items()}
    if total is None:  # as many rows as the scarcest pool allows without repeating any
        total = int(min(len(pools[k]) / s for k, s in shares.items()))
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    drawn = {}
    for k, s in shares.items():
        want = int(round(total * s))
        pool = list(pools[k])
        rng.shuffle(pool)
        picked = pool[:want] + [rng.choice(pool) for _ in range(max(0, want - len(pool)))]
        drawn[k] = len(picked)
        out += picked
    rng.shuffle(out)
    return out, {"requested": dict(mix), "used_shares": {k: round(v, 4) for k, v in shares.items()},
                 "missing_pools": missing, "rows": drawn, "total": len(out)}
