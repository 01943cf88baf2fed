"""Verify a GGUF against the HF model it came from, on fixed prompts:

* tokenization parity: a conversation rendered by the GGUF's own chat template and tokenized by
  llama.cpp gives exactly the token ids of the training path (one <bos>, the same template);
* next-token agreement: at every position of the prompts where the HF model's first choice is
  clear, the top-1 token of llama.cpp equals the HF model's (all positions are reported too), and
  the KL divergence KL(HF || GGUF) of the two next-token distributions.

f16 must match closely (a failed check fails the export with the numbers); q8_0 and q4_k_m
report their drift and fail only when the file is broken (agreement below ``broken_top1``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

PROMPTS = [
    [{"role": "user", "content": "I finally finished the painting I started last winter. It feels strange."}],
    [{"role": "user", "content": "Can you help me plan a small birthday dinner for six people on a budget?"},
     {"role": "assistant", "content": "Of course. Let's start with what your friends love to eat."},
     {"role": "user", "content": "Mostly pasta, and one of them is vegetarian."}],
    [{"role": "user", "content": "Bugün kendimi biraz yalnız hissediyorum, konuşabilir miyiz?"}],
]
LIMITS = {"f16": {"top1": 0.98, "kl": 0.01}}  # must-pass; other quants report
DECISIVE = 0.05  # nats between the HF model's first and second choice for a position to count in top-1
BROKEN_TOP1 = 0.5


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def reference_ids(tokenizer: Any, system: str | None) -> list[list[int]]:
    """Token ids of the fixed conversations through the training path (generation prompt added)."""
    from jessy.data.template import CHAT_TEMPLATE, with_system

    return [tokenizer.apply_chat_template(with_system(m, system), chat_template=CHAT_TEMPLATE, tokenize=True,
                                          add_generation_prompt=True, return_dict=True)["input_ids"]
            for m in PROMPTS]


def gguf_ids(llm: Any, template: str, system: str | None) -> list[list[int]]:
    """The same conversations rendered by the GGUF's embedded template, tokenized by llama.cpp."""
    import jinja2

    from jessy.data.template import with_system

    env = jinja2.Environment()
    out = []
    for m in PROMPTS:
        text = env.from_string(template).render(messages=with_system(m, system), bos_token="<bos>",
                                                add_generation_prompt=True)
        out.append(llm.tokenize(text.encode(), add_bos=False, special=True))
    return out


def hf_logits(model: Any, ids: list[int]) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0].float().numpy()


def gguf_logits(llm: Any, ids: list[int]) -> np.ndarray:
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float32)


def verify(gguf_path: Path, quant: str, model: Any, tokenizer: Any, system: str | None) -> dict[str, Any]:
    """Numbers for one GGUF; ``passed`` False (with ``failures``) when a check fails."""
    from llama_cpp import Llama

    ref = reference_ids(tokenizer, system)
    # logits_all keeps n_ctx x 262k floats: size the context to the prompts, not more
    llm = Llama(model_path=str(gguf_path), n_ctx=max(map(len, ref)) + 16, logits_all=True, verbose=False)
    template = llm.metadata.get("tokenizer.chat_template")
    try:
        failures = []
        if template is None:
            failures.append("the GGUF carries no chat template")
            parity = False
        else:
            got = gguf_ids(llm, template, system)
            parity = got == ref
            if not parity:
                k = next(i for i, (a, b) in enumerate(zip(got, ref)) if a != b)
                failures.append(f"tokenization parity: conversation {k} gives {len(got[k])} ids through llama.cpp "
                                f"vs {len(ref[k])} through training (first difference at "
                                f"{next((j for j, (x, y) in enumerate(zip(got[k], ref[k])) if x != y), 'the end')})")
        agree, kls, n, decisive, agree_decisive = 0, [], 0, 0, 0
        for ids in ref:
            a, b = hf_logits(model, ids), gguf_logits(llm, ids)
            pa, pb = _log_softmax(a), _log_softmax(b)
            same = a.argmax(-1) == b.argmax(-1)
            agree += int(same.sum())
            # positions where the HF model's first choice is clear (> DECISIVE nats ahead of the second):
            # elsewhere a near-tie may flip on rounding without the model being any different
            top2 = np.sort(pa, axis=-1)[:, -2:]
            clear = (top2[:, 1] - top2[:, 0]) > DECISIVE
            decisive += int(clear.sum())
            agree_decisive += int((same & clear).sum())
            kls.extend((np.exp(pa) * (pa - pb)).sum(-1).tolist())
            n += len(ids)
    finally:
        llm.close()
    top1, kl = agree_decisive / max(decisive, 1), float(np.mean(kls))
    limit = LIMITS.get(quant)
    if limit and (top1 < limit["top1"] or kl > limit["kl"]):
        failures.append(f"{quant} drifts from the HF model: top-1 agreement {top1:.3f} (needs >= {limit['top1']}), "
                        f"KL {kl:.4f} (needs <= {limit['kl']})")
    elif top1 < BROKEN_TOP1:
        failures.append(f"{quant} looks broken: top-1 agreement {top1:.3f} < {BROKEN_TOP1}")
    return {"quant": quant, "file": str(gguf_path), "size_bytes": gguf_path.stat().st_size, "positions": n,
            "top1_agreement": top1, "top1_agreement_all": agree / n, "decisive_positions": decisive,
            "kl_mean": kl, "kl_max": float(np.max(kls)), "token_parity": parity,
            "passed": not failures, "failures": failures}
