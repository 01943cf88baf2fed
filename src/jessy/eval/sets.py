"""The bundled evaluation sets (``resources/eval/sets``), read into one item type.

Sets: ``persona`` (single prompts and 3-turn conversations), ``reasoning``, ``dimensions``
(single- and multi-dimension cases with expected dimensions and a gold reference reply),
``redteam`` (five categories, expected behaviour), ``sycophancy`` and ``overrefusal``. The
detector sets (``detectors_dev``/``detectors_heldout``) are labelled replies, not prompts.
None of them shares a prompt with the training data (``tests/test_eval_sets.py`` checks).
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jessy.config import RESOURCES

SETS_DIR = Path(str(RESOURCES / "eval" / "sets"))
PROMPT_SETS = ("persona", "reasoning", "dimensions", "redteam", "sycophancy", "overrefusal")
_FILES = {"persona": ["persona"], "reasoning": ["reasoning"], "dimensions": ["dimensions_single", "dimensions_multi"],
          "redteam": ["redteam"], "sycophancy": ["sycophancy"], "overrefusal": ["overrefusal"]}


@dataclass
class EvalItem:
    id: str
    set: str
    turns: list[str]  # the user messages, in order (one for single-turn items)
    language: str
    category: str = ""  # red-team category, sycophancy kind, reasoning kind
    expected: str = ""  # expected behaviour: warm_refusal, redirect, comply, correct_gently, decline_validation
    dimensions: list[str] = field(default_factory=list)  # expected active dimensions
    reference: str = ""  # a gold reply, where the set has one
    note: str = ""

    @property
    def prompt(self) -> str:
        return self.turns[0]


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not valid JSON ({e.msg})") from None
    return rows


def _item(set_name: str, row: dict[str, Any]) -> EvalItem:
    turns = row.get("turns") or [row["prompt"]]
    expected = row.get("expected", "")
    dims = expected if isinstance(expected, list) else []
    return EvalItem(
        id=row["id"], set=set_name, turns=list(turns), language=row.get("language", "en"),
        category=row.get("category") or row.get("kind") or "", expected="" if dims else expected,
        dimensions=dims, reference=row.get("reference", ""), note=row.get("note") or row.get("truth") or "")


def load_items(sets: tuple[str, ...] | list[str] = PROMPT_SETS, max_per_set: int | None = None,
               seed: int = 0) -> list[EvalItem]:
    """The items of ``sets``; ``max_per_set`` takes a deterministic subsample stratified by
    category (and language), so a quick run still sees every red-team category and Turkish."""
    items: list[EvalItem] = []
    for name in sets:
        if name not in _FILES:
            raise ValueError(f"unknown evaluation set {name!r} (known: {', '.join(PROMPT_SETS)})")
        rows = [_item(name, r) for f in _FILES[name] for r in read_jsonl(SETS_DIR / f"{f}.jsonl")]
        if max_per_set and len(rows) > max_per_set:
            rows = _stratified(rows, max_per_set, seed)
        items += rows
    return items


def _stratified(rows: list[EvalItem], n: int, seed: int) -> list[EvalItem]:
    """Round robin over the categories (or expected dimensions), and within each over languages."""
    groups: dict[str, dict[str, list[EvalItem]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        key = r.category or (r.dimensions[0] if len(r.dimensions) == 1 else f"{len(r.dimensions)} dims")
        groups[key][r.language].append(r)
    rng = random.Random(seed)
    for langs in groups.values():
        for group in langs.values():
            rng.shuffle(group)
    keys = sorted(groups)
    rng.shuffle(keys)
    turn = dict.fromkeys(keys, 0)
    picked: list[EvalItem] = []
    while len(picked) < n:
        for k in keys:
            langs = [lang for lang in sorted(groups[k]) if groups[k][lang]]
            if langs and len(picked) < n:
                lang = langs[turn[k] % len(langs)]
                turn[k] += 1
                picked.append(groups[k][lang].pop())
    order = {r.id: i for i, r in enumerate(rows)}
    return sorted(picked, key=lambda r: order[r.id])


def labelled_replies(name: str = "detectors_dev") -> list[dict[str, Any]]:
    """A labelled detector set: rows with ``text`` and boolean ``meta``/``dependency``/``refusal``."""
    return read_jsonl(SETS_DIR / f"{name}.jsonl")
