"""Open any model jessy can load as a generation backend: the packaged base name, a local HF
directory, a PEFT adapter directory (merged into its base in memory), a run directory (its
``final`` merged model) or a ``.gguf`` file (llama.cpp)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jessy.generation.backends import Backend, LlamaCppBackend, TransformersBackend


def describe(ref: str) -> str:
    """What kind of model ``ref`` names: gguf, run, adapter, hf or base."""
    p = Path(ref)
    if ref.endswith(".gguf"):
        return "gguf"
    if (p / "run.json").is_file():
        return "run"
    if (p / "adapter_config.json").is_file():
        return "adapter"
    if (p / "config.json").is_file():
        return "hf"
    return "base"


def model_path(ref: str) -> str:
    """A run directory's merged model; anything else unchanged."""
    if describe(ref) == "run":
        final = Path(ref) / "final"
        if not (final / "config.json").is_file():
            raise ValueError(f"{ref}: the run has no merged model yet (run/final); finish training first")
        return str(final)
    return ref


def open_model(ref: str, batch_size: int = 4, n_ctx: int = 4096) -> Backend:
    """A backend for ``ref`` (see the module docstring); raises ValueError naming what is missing."""
    kind = describe(ref)
    if kind == "gguf":
        if not Path(ref).is_file():
            raise ValueError(f"{ref}: no such GGUF file")
        return LlamaCppBackend(ref, n_ctx=n_ctx)
    if kind == "adapter":
        return _adapter_backend(Path(ref), batch_size)
    from jessy.model.resolve import resolve_base

    return TransformersBackend(resolve_base(model_path(ref)), batch_size=batch_size)


def merged_adapter(adapter: Path) -> tuple[Any, Any, str]:
    """(model, tokenizer, base path): the adapter merged into the base its config names."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from jessy.model.resolve import load_tokenizer, resolve_base

    base_ref = json.loads((adapter / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if not base_ref:
        raise ValueError(f"{adapter}/adapter_config.json names no base_model_name_or_path")
    base = resolve_base(base_ref)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(adapter)).merge_and_unload()
    tok = load_tokenizer(str(adapter) if (adapter / "tokenizer_config.json").is_file() else base)
    return model, tok, base


def _adapter_backend(adapter: Path, batch_size: int) -> Backend:
    model, tok, base = merged_adapter(adapter)
    backend = TransformersBackend(base, batch_size=batch_size, model=model, tokenizer=tok)
    backend.id = f"transformers:{base}+{adapter.resolve()}"
    return backend
