"""Quality gates: named checks, each recording its value, threshold and reason on every row.

Gates, in order: meta_commentary, dependency (the persona's phrase lists, zero tolerance),
length, repetition (a looping reply), language, novelty (not a copy of a gold row: a teacher
shown few-shot examples likes to repeat them), persona_consistency (cosine to the persona
profile), dimensional_accuracy (requested dimensions the reply activates), then clarity and
naturalness when a judge is set.
Numeric thresholds may be ``calibrated``: set so that ``calibration_keep`` of the gold rows (the
bundled seeds or your own reference rows) pass, and reported with what the fixed figures would do.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from jessy.config import GatesConfig
from jessy.data.embed import embed, leave_one_out_cosines, profile
from jessy.eval.dimensions import DimensionExtractor, recall
from jessy.eval.judge import judge
from jessy.generation.backends import Backend
from jessy.persona.spec import Persona

GATES = ("meta_commentary", "dependency", "length", "repetition", "language", "novelty", "persona_consistency",
         "dimensional_accuracy", "clarity", "naturalness")
CLAIMED = {"persona_consistency": 0.85, "dimensional_accuracy": 0.90}  # the seeds' figures


def final_reply(row: dict[str, Any]) -> str:
    return row["messages"][-1]["content"] if "messages" in row else row["chosen"]


def last_user(row: dict[str, Any]) -> str:
    msgs = row["messages"] if "messages" in row else row["prompt"]
    return next(m["content"] for m in reversed(msgs) if m["role"] == "user")


def repetition_share(text: str, n: int = 3) -> float:
    """How much of a reply its most frequent word trigram covers (a looping reply scores high)."""
    words = text.lower().split()
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    if len(grams) < 6:
        return 0.0
    counts: dict[tuple[str, ...], int] = {}
    for g in grams:
        counts[g] = counts.get(g, 0) + 1
    top = max(counts.values())
    return top * n / len(words) if top > 1 else 0.0


def detect_language(text: str) -> str:
    from langdetect import DetectorFactory, LangDetectException, detect

    DetectorFactory.seed = 0
    try:
        return detect(text)
    except LangDetectException:
        return "unknown"


@dataclass
class GateReport:
    """Per gate: how many rows it saw and passed; plus the calibration it used."""

    checked: dict[str, int] = field(default_factory=dict)
    passed: dict[str, int] = field(default_factory=dict)
    thresholds: dict[str, float] = field(default_factory=dict)
    calibration: dict[str, Any] = field(default_factory=dict)

    def retention(self) -> dict[str, float]:
        return {g: self.passed[g] / self.checked[g] for g in self.checked if self.checked[g]}


class Gates:
    def __init__(self, persona: Persona, cfg: GatesConfig, reference_rows: Sequence[dict[str, Any]],
                 judge_backend: Backend | None = None) -> None:
        if not reference_rows:
            raise ValueError("the gates need reference rows (the bundled seeds or your own) to calibrate")
        self.persona, self.cfg, self.judge = persona, cfg, judge_backend
        ref_texts = [final_reply(r) for r in reference_rows]
        ref_emb = embed(ref_texts)
        self.ref_ids, self.ref_emb = [r["id"] for r in reference_rows], ref_emb
        self.profile = profile(ref_emb)
        labels = [r["metadata"].get("dimensions_active") or [] for r in reference_rows]
        self.extractor = DimensionExtractor(persona, ref_texts, reference_embeddings=ref_emb,
                                            reference_labels=labels if any(labels) else None)
        loo = leave_one_out_cosines(ref_texts, ref_emb)
        found = self.extractor.extract(ref_texts, ref_emb)
        dim_recall = np.array([recall(f, r["metadata"].get("dimensions_active") or [])
                               for f, r in zip(found, reference_rows)])
        q = 100 * (1 - cfg.calibration_keep)
        gold = {"persona_consistency": loo, "dimensional_accuracy": dim_recall}
        self.report = GateReport()
        for name, values in gold.items():
            setting = getattr(cfg, name)
            thr = float(np.percentile(values, q)) if setting == "calibrated" else float(setting)
            if setting == "calibrated" and thr <= 0 and (values > 0).any():
                thr = float(values[values > 0].min())  # a zero threshold would pass anything: demand > 0
            self.report.thresholds[name] = thr
            self.report.calibration[name] = {
                "setting": setting, "threshold": round(thr, 4), "gold_rows": len(values),
                "gold_pass_at_threshold": round(float((values >= thr).mean()), 4),
                "claimed": CLAIMED[name],
                "gold_pass_at_claimed": round(float((values >= CLAIMED[name]).mean()), 4),
                "gold_percentiles": {p: round(float(np.percentile(values, p)), 4) for p in (5, 10, 25, 50, 75, 90)},
            }

    def check(self, rows: Sequence[dict[str, Any]]) -> list[dict[str, dict[str, Any]]]:
        """Every gate on every row: ``{gate: {"passed", "value", "threshold", "reason"}}``."""
        replies = [final_reply(r) for r in rows]
        emb = embed(replies)
        cos = emb @ self.profile
        found = self.extractor.extract(replies, emb)
        out = []
        for row, reply, c, dims, e_row in zip(rows, replies, cos, found, emb):
            res: dict[str, dict[str, Any]] = {}
            assistant = [m["content"] for m in row.get("messages", []) if m["role"] == "assistant"] or [reply]
            flags = [f for text in assistant for f in self.persona.red_flags_in(text)]
            for kind in ("meta_commentary", "dependency"):
                hits = sorted({p for k, p in flags if k == kind})
                res[kind] = {"passed": not hits, "value": len(hits), "threshold": 0,
                             "reason": f"{kind.replace('_', '-')} phrase(s): {', '.join(hits)}" if hits else ""}
            words = len(reply.split())
            ok = self.cfg.min_words <= words <= self.cfg.max_words
            bounds = [self.cfg.min_words, self.cfg.max_words]
            res["length"] = {"passed": ok, "value": words, "threshold": bounds,
                             "reason": "" if ok else f"{words} words, outside {bounds[0]}-{bounds[1]}"}
            rep = repetition_share(reply)
            ok = rep <= self.cfg.max_repetition
            res["repetition"] = {"passed": ok, "value": round(rep, 4), "threshold": self.cfg.max_repetition,
                                 "reason": "" if ok else f"one phrase repeats over {rep:.0%} of the reply"}
            want = row["metadata"].get("language")
            lang = detect_language(reply)
            ok = lang in self.cfg.languages and (want is None or lang == want)
            res["language"] = {"passed": ok, "value": lang, "threshold": want or self.cfg.languages,
                               "reason": "" if ok else f"reply is in {lang!r}, expected {want or self.cfg.languages}"}
            sims = self.ref_emb @ e_row
            j = int(np.argmax(sims))
            ok = bool(sims[j] < self.cfg.max_gold_similarity)
            res["novelty"] = {"passed": ok, "value": round(float(sims[j]), 4),
                              "threshold": self.cfg.max_gold_similarity,
                              "reason": "" if ok else f"copies gold row {self.ref_ids[j]} (cosine {sims[j]:.3f})"}
            thr = self.report.thresholds["persona_consistency"]
            res["persona_consistency"] = {"passed": bool(c >= thr), "value": round(float(c), 4), "threshold": thr,
                                          "reason": "" if c >= thr else f"cosine {c:.3f} < {thr:.3f}"}
            requested = row["metadata"].get("dimensions_active") or []
            r = recall(dims, requested)
            thr = self.report.thresholds["dimensional_accuracy"]
            res["dimensional_accuracy"] = {
                "passed": r >= thr, "value": round(r, 4), "threshold": thr, "found": dims,
                "reason": "" if r >= thr else f"activates {dims}, requested {requested} (recall {r:.2f} < {thr:.2f})"}
            if self.judge is not None:
                for name in ("clarity", "naturalness"):
                    js = judge(self.judge, name, last_user(row), reply)
                    ok = js.score is not None and js.score >= self.cfg.judge_min
                    shown = "none" if js.score is None else f"{js.score:.2f}"
                    res[name] = {"passed": ok, "value": js.score, "threshold": self.cfg.judge_min,
                                 "reason": "" if ok else f"judge score {shown} < {self.cfg.judge_min}"}
            for name, g in res.items():
                self.report.checked[name] = self.report.checked.get(name, 0) + 1
                self.report.passed[name] = self.report.passed.get(name, 0) + bool(g["passed"])
            out.append(res)
        return out


def failed(result: dict[str, dict[str, Any]]) -> list[str]:
    return [g for g in GATES if g in result and not result[g]["passed"]]
