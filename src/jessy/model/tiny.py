"""A tiny random Gemma 3 with the real Gemma tokenizer, for fast tests of the real code paths."""

from __future__ import annotations

import shutil
from pathlib import Path

from jessy.model.resolve import gemma_tokenizer_dir


def build_tiny_gemma3(out_dir: Path | str, seed: int = 0, hidden_size: int = 32, layers: int = 2) -> Path:
    """Write a randomly initialised two-layer Gemma 3 (full 262k vocabulary) to ``out_dir``, in the
    shape llama.cpp's Gemma 3 assumes (every sixth layer global, queries scaled by 1/sqrt(head_dim)),
    so that it exports to GGUF like the real model."""
    import torch
    from transformers import AutoTokenizer, Gemma3ForCausalLM, Gemma3TextConfig

    out = Path(out_dir)
    tok = AutoTokenizer.from_pretrained(gemma_tokenizer_dir())
    torch.manual_seed(seed)
    config = Gemma3TextConfig(
        vocab_size=len(tok), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
        layer_types=["full_attention" if i % 6 == 5 else "sliding_attention" for i in range(layers)],
        sliding_window=64, query_pre_attn_scalar=16, initializer_range=0.1,
        max_position_embeddings=4096, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, tie_word_embeddings=True,
    )
    model = Gemma3ForCausalLM(config)
    if out.exists():
        shutil.rmtree(out)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out
