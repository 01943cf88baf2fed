"""Inference speed: a q4_k_m GGUF through llama.cpp vs the HF model through transformers generate,
same prompts, same session, streaming (first-token latency) and whole replies (tokens/s).

    python benchmarks/inference.py [--gguf FILE] [--hf DIR] [--tokens 64] [--prompts 4]

Defaults: the packaged Gemma 3 270M (its q4_k_m GGUF, and the HF model converted from it).
Prints each engine's numbers and the ratio llama.cpp / transformers.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

PROMPTS = [
    "I finally finished the painting I started last winter, and it feels strange to be done.",
    "Can you help me plan a small birthday dinner for six people on a budget?",
    "My sister and I haven't spoken in a year. How do I start?",
    "Bugün kendimi biraz yalnız hissediyorum, konuşabilir miyiz?",
    "What is a good way to learn to cook without wasting food?",
    "I got the job! I start on Monday and I'm nervous.",
]


def measure(backend, prompts: list[str], tokens: int) -> dict[str, float]:
    from jessy.generation.backends import GenRequest
    from jessy.persona import load_persona

    system = load_persona().system_prompt("short")
    first, rates = [], []
    for p in prompts:
        req = GenRequest.chat([{"role": "system", "content": system}, {"role": "user", "content": p}],
                              max_new_tokens=tokens, temperature=0.0)
        t0 = time.perf_counter()
        t_first = None
        for _ in backend.stream(req):
            if t_first is None:
                t_first = time.perf_counter() - t0
        first.append(t_first or 0.0)
        t0 = time.perf_counter()
        res = backend.generate([req])[0]
        rates.append(res.completion_tokens / (time.perf_counter() - t0))
    return {"first_token_s": statistics.median(first), "tokens_per_s": statistics.median(rates)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--gguf", help="a q4_k_m GGUF (default: the packaged Gemma 3 270M)")
    ap.add_argument("--hf", help="an HF model directory (default: the packaged model, converted)")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--prompts", type=int, default=4)
    args = ap.parse_args()

    from jessy.generation.backends import LlamaCppBackend, TransformersBackend
    from jessy.model.resolve import packaged_gguf, resolve_base

    prompts = PROMPTS[: args.prompts]
    llama = LlamaCppBackend(args.gguf or str(packaged_gguf()))
    hf = TransformersBackend(args.hf or resolve_base("gemma3-270m"), batch_size=1)
    measure(llama, prompts[:1], 8)  # warm up both
    measure(hf, prompts[:1], 8)
    a = measure(llama, prompts, args.tokens)
    b = measure(hf, prompts, args.tokens)
    print(f"prompts {len(prompts)}, up to {args.tokens} new tokens, greedy, {os.cpu_count()} CPU threads")
    print(f"llama.cpp q4_k_m : {a['tokens_per_s']:6.1f} tok/s, first token {a['first_token_s'] * 1000:6.0f} ms")
    print(f"transformers fp32: {b['tokens_per_s']:6.1f} tok/s, first token {b['first_token_s'] * 1000:6.0f} ms")
    print(f"ratio llama.cpp / transformers: {a['tokens_per_s'] / b['tokens_per_s']:.2f}x tokens/s, "
          f"{b['first_token_s'] / a['first_token_s']:.2f}x faster first token")


if __name__ == "__main__":
    main()
