"""Which of the persona's dimensions a reply activates.

Three signals, strongest first: explicit markers (``[Practical]``, ``<dim_practical>``) decide on
their own when present; otherwise each dimension scores its embedding similarity to the
dimension's prototype (its description, blended with the centroid of labelled reference replies
when there are any; z-scored against the reference replies, so that no dimension wins by having
a wordier description) plus ``cue_weight`` per cue word found (at most three). The
dimensions scoring ``threshold`` or more are active (at most ``max_active``, at least the best).
The defaults were picked on the bundled seeds' labels (leave-one-out macro-F1 0.50 there).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from jessy.data.embed import embed
from jessy.persona.spec import Persona, normalize_quotes


class DimensionExtractor:
    def __init__(self, persona: Persona, reference_texts: Sequence[str], cue_weight: float = 0.6,
                 threshold: float = 1.0, max_active: int = 6, reference_embeddings: np.ndarray | None = None,
                 reference_labels: Sequence[Sequence[str]] | None = None) -> None:
        self.names = persona.dimension_names
        self.cue_weight, self.threshold, self.max_active = cue_weight, threshold, max_active
        ref_emb = embed(list(reference_texts)) if reference_embeddings is None else reference_embeddings
        protos = embed([f"{d.name}: {d.description} {', '.join(d.cues)}" for d in persona.dimensions])
        if reference_labels is not None:  # blend in the centroid of the reference replies labelled with it
            for j, name in enumerate(self.names):
                members = [i for i, labels in enumerate(reference_labels) if name in labels]
                if members:
                    centroid = ref_emb[members].mean(axis=0)
                    protos[j] = protos[j] + centroid / np.linalg.norm(centroid)
        self.prototypes = protos / np.linalg.norm(protos, axis=1, keepdims=True)
        # cue words match as prefixes: "lonely" also finds "loneliness"
        self.cues = [[re.compile(rf"(?<!\w){re.escape(normalize_quotes(c.lower()))}") for c in d.cues]
                     for d in persona.dimensions]
        self.markers = [re.compile(rf"\[{re.escape(n)}\]|<dim_{re.escape(n.lower())}>", re.IGNORECASE)
                        for n in self.names]
        ref = ref_emb @ self.prototypes.T
        self.mean, self.std = ref.mean(axis=0), ref.std(axis=0) + 1e-6

    def scores(self, texts: Sequence[str], embeddings: np.ndarray | None = None) -> np.ndarray:
        e = embed(list(texts)) if embeddings is None else embeddings
        z = (e @ self.prototypes.T - self.mean) / self.std
        cue = np.array([[min(sum(len(p.findall(low)) for p in pats), 3) for pats in self.cues]
                        for low in (normalize_quotes(t.lower()) for t in texts)], dtype=np.float32)
        return z + self.cue_weight * cue.reshape(z.shape)

    def extract(self, texts: Sequence[str], embeddings: np.ndarray | None = None) -> list[list[str]]:
        if not texts:
            return []
        scores = self.scores(texts, embeddings)
        out = []
        for text, s in zip(texts, scores):
            explicit = [n for n, m in zip(self.names, self.markers) if m.search(text)]
            if explicit:
                out.append(explicit)
                continue
            best = [j for j in np.argsort(-s)[: self.max_active] if s[j] >= self.threshold]
            out.append([self.names[j] for j in (best or [int(np.argmax(s))])])
        return out


def recall(found: Sequence[str], expected: Sequence[str]) -> float:
    """Share of the expected dimensions that were found (1.0 when nothing was expected)."""
    return len(set(found) & set(expected)) / len(set(expected)) if expected else 1.0


def f1_scores(found: Sequence[Sequence[str]], expected: Sequence[Sequence[str]],
              names: Sequence[str]) -> dict[str, float]:
    """Per-dimension F1 and their macro mean (key ``macro``)."""
    out = {}
    for n in names:
        tp = sum(n in f and n in e for f, e in zip(found, expected))
        fp = sum(n in f and n not in e for f, e in zip(found, expected))
        fn = sum(n not in f and n in e for f, e in zip(found, expected))
        out[n] = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
    out["macro"] = float(np.mean([out[n] for n in names]))
    return out
