"""HF Gemma 3 (safetensors) -> GGUF f16 with gguf-py, then q8_0 / q4_k_m with llama.cpp's quantizer.

The writer is small because the hard parts are borrowed: tensor names from gguf-py's
``TensorNameMap`` for the GEMMA3 architecture, and the tokenizer (262k SentencePiece pieces,
scores and types) copied from the packaged Gemma 3 GGUF, which has the same vocabulary (checked
against the model's own tokenizer before anything is written). Two Gemma details:

* Gemma3RMSNorm computes ``x * (1 + w)``; llama.cpp's kernel computes ``x * w``, so every norm
  weight is written as ``w + 1`` (llama.cpp's own converter does the same);
* the embedding is tied: there is no ``output.weight``; llama.cpp reuses ``token_embd``.

The chat template written into the file is jessy's inference template (the persona folded into
the first user turn): without one, llama.cpp falls back to another format and answers empty.
Every file is written under a temporary name and renamed when complete; a failure removes it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from jessy.data.template import inference_template

QUANT_FTYPES = {"f16": 1, "q8_0": 7, "q4_k_m": 15}  # llama_ftype values
TOKENIZER_KEYS = ("tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens", "tokenizer.ggml.scores",
                  "tokenizer.ggml.token_type")


class ExportError(RuntimeError):
    """An export step failed; the message names the step."""


@contextmanager
def atomic_file(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it into place on success, delete it on failure."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.partial")
    tmp.unlink(missing_ok=True)
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def _tokenizer_fields(model_dir: Path) -> dict[str, Any]:
    """The packaged GGUF's tokenizer arrays, checked against ``model_dir``'s tokenizer."""
    import gguf

    from jessy.config import cache_dir
    from jessy.model.resolve import load_tokenizer, packaged_gguf

    cached = cache_dir() / "gguf" / "gemma3_tokenizer_fields.json"  # parsing 262k pieces takes ~20 s
    if cached.is_file():
        fields = json.loads(cached.read_text(encoding="utf-8"))
    else:
        reader = gguf.GGUFReader(str(packaged_gguf()))
        fields = {k: reader.fields[k].contents() for k in TOKENIZER_KEYS}
        fields = {k: v.tolist() if hasattr(v, "tolist") else v for k, v in fields.items()}
        with atomic_file(cached) as tmp:
            tmp.write_text(json.dumps(fields, ensure_ascii=False), encoding="utf-8")
    tok = load_tokenizer(str(model_dir))
    pieces = fields["tokenizer.ggml.tokens"]
    vocab = tok.get_vocab()
    probe = [2, 3, 105, 106, 107, 1000, 50000, 200000, len(pieces) - 1]
    mismatched = [i for i in probe if vocab.get(pieces[i]) != i]
    if mismatched:
        raise ExportError(f"tokenizer: {model_dir} does not use the Gemma 3 vocabulary (pieces {mismatched} differ); "
                          "only Gemma 3 models can be exported")
    extra = sorted((i, t) for t, i in vocab.items() if i >= len(pieces))  # e.g. the persona's <dim_*> tokens
    if extra:
        fields["tokenizer.ggml.tokens"] = list(pieces) + [t for _, t in extra]
        fields["tokenizer.ggml.scores"] = list(fields["tokenizer.ggml.scores"]) + [0.0] * len(extra)
        fields["tokenizer.ggml.token_type"] = list(fields["tokenizer.ggml.token_type"]) + \
            [int(gguf.TokenType.USER_DEFINED)] * len(extra)
    return fields


def _check_llama_cpp_compatible(text: dict[str, Any]) -> None:
    """llama.cpp's Gemma 3 hard-codes two things a config could say otherwise: every sixth layer
    attends globally (the rest use the sliding window), and queries are scaled by 1/sqrt(head_dim)."""
    n, head = text["num_hidden_layers"], text.get("head_dim", 256)
    types = text.get("layer_types")
    expected = ["full_attention" if i % 6 == 5 else "sliding_attention" for i in range(n)]
    if types and list(types) != expected:
        raise ExportError(f"config: layer_types {types} differ from llama.cpp's Gemma 3 pattern (every sixth layer "
                          "global); the GGUF would compute another model")
    scalar = text.get("query_pre_attn_scalar", head)
    if scalar != head:
        raise ExportError(f"config: query_pre_attn_scalar {scalar} != head_dim {head}; llama.cpp's Gemma 3 scales "
                          "queries by 1/sqrt(head_dim)")


def _hparams(cfg: dict[str, Any]) -> dict[str, Any]:
    text = cfg.get("text_config", cfg)
    _check_llama_cpp_compatible(text)
    rope = text.get("rope_parameters") or {}
    theta = (rope.get("full_attention") or rope).get("rope_theta") or text.get("rope_theta", 1_000_000.0)
    return {
        "context_length": text.get("max_position_embeddings", 32768), "embedding_length": text["hidden_size"],
        "block_count": text["num_hidden_layers"], "feed_forward_length": text["intermediate_size"],
        "head_count": text["num_attention_heads"], "head_count_kv": text["num_key_value_heads"],
        "key_length": text.get("head_dim", 256), "value_length": text.get("head_dim", 256),
        "rms_eps": text.get("rms_norm_eps", 1e-6), "rope_freq_base": float(theta),
        "sliding_window": text.get("sliding_window"), "final_logit_softcapping": text.get("final_logit_softcapping"),
    }


def _tensors(model_dir: Path, n_blocks: int) -> Iterator[tuple[str, np.ndarray]]:
    """(GGUF name, array) for every weight: norms +1 and F32, matrices F16, lm_head dropped (tied)."""
    import gguf
    from safetensors import safe_open

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GEMMA3, n_blocks)
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise ExportError(f"merged weights: no *.safetensors in {model_dir}")
    for f in files:
        with safe_open(str(f), framework="pt") as st:
            for key in st.keys():  # noqa: SIM118 - safe_open is not a dict
                if key.startswith("lm_head."):
                    continue  # tied to the embedding
                name = names.get_name(key, try_suffixes=(".weight", ".bias"))
                if name is None:
                    raise ExportError(f"tensor map: no GGUF name for {key!r}")
                data = st.get_tensor(key).float().numpy()
                if key.endswith("norm.weight"):
                    yield name, (data + 1.0).astype(np.float32)
                elif data.ndim == 1:
                    yield name, data.astype(np.float32)
                else:
                    yield name, data.astype(np.float16)


def write_f16(model_dir: Path, target: Path, name: str = "jessy") -> Path:
    """Write an f16 GGUF of the HF Gemma 3 model in ``model_dir``."""
    import gguf

    cfg = json.loads((model_dir / "config.json").read_text())
    hp = _hparams(cfg)
    tok_fields = _tokenizer_fields(model_dir)
    with atomic_file(target) as tmp:
        w = gguf.GGUFWriter(str(tmp), "gemma3")
        w.add_type("model")
        w.add_name(name)
        w.add_file_type(1)  # MOSTLY_F16
        w.add_context_length(hp["context_length"])
        w.add_embedding_length(hp["embedding_length"])
        w.add_block_count(hp["block_count"])
        w.add_feed_forward_length(hp["feed_forward_length"])
        w.add_head_count(hp["head_count"])
        w.add_head_count_kv(hp["head_count_kv"])
        w.add_key_length(hp["key_length"])
        w.add_value_length(hp["value_length"])
        w.add_layer_norm_rms_eps(hp["rms_eps"])
        w.add_rope_freq_base(hp["rope_freq_base"])
        if hp["sliding_window"]:
            w.add_sliding_window(hp["sliding_window"])
        if hp["final_logit_softcapping"]:
            w.add_final_logit_softcapping(hp["final_logit_softcapping"])
        w.add_tokenizer_model(tok_fields["tokenizer.ggml.model"])
        w.add_tokenizer_pre(tok_fields["tokenizer.ggml.pre"])
        w.add_token_list(tok_fields["tokenizer.ggml.tokens"])
        w.add_token_scores(tok_fields["tokenizer.ggml.scores"])
        w.add_token_types(tok_fields["tokenizer.ggml.token_type"])
        w.add_bos_token_id(2)
        w.add_eos_token_id(1)
        w.add_unk_token_id(3)
        w.add_pad_token_id(0)
        w.add_add_bos_token(True)
        w.add_add_eos_token(False)
        w.add_add_space_prefix(False)
        w.add_eot_token_id(106)  # <end_of_turn>: llama.cpp stops generation on it
        w.add_chat_template(inference_template())
        n = 0
        for tname, arr in _tensors(model_dir, hp["block_count"]):
            w.add_tensor(tname, arr)
            n += 1
        if n == 0:
            raise ExportError("tensors: nothing to write")
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    return target


def quantize(src: Path, target: Path, quant: str) -> Path:
    """llama.cpp's quantizer (``llama_model_quantize``) from the f16 file; no partial file survives."""
    import llama_cpp

    if quant not in QUANT_FTYPES:
        raise ExportError(f"quantize: unknown type {quant!r} (known: {', '.join(QUANT_FTYPES)})")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = QUANT_FTYPES[quant]
    params.nthread = os.cpu_count() or 1
    with atomic_file(target) as tmp:
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), params)
        if rc != 0:
            raise ExportError(f"quantize {quant}: llama_model_quantize returned {rc}")
    return target
