"""Base + adapters -> one HF-format safetensors directory (tokenizer and chat template included),
loadable by plain ``AutoModelForCausalLM.from_pretrained``.

A run directory already holds its merged model (``final/``: each stage was merged into the base
before the next one trained, see ``train/pipeline.py``); it is copied. A PEFT adapter directory
is merged into the base named in its ``adapter_config.json``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from jessy.export.gguf import ExportError
from jessy.generation.open import describe


def merge(source: str, out_dir: Path) -> Path:
    """Write the merged model of ``source`` (a run or adapter directory) into ``out_dir`` atomically."""
    from jessy.model.resolve import _atomic_dir

    kind = describe(source)
    if out_dir.exists():
        raise ExportError(f"merge: {out_dir} already exists; choose another directory or remove it")
    with _atomic_dir(out_dir) as tmp:
        if kind == "run":
            final = Path(source) / "final"
            if not (final / "config.json").is_file():
                raise ExportError(f"merge: {source} has no merged model (final/); finish training first")
            for f in final.iterdir():
                if f.is_file():
                    shutil.copy2(f, tmp / f.name)
        elif kind == "adapter":
            _merge_adapter(Path(source), tmp)
        else:
            raise ExportError(f"merge: {source} is neither a run directory (run.json) nor a PEFT adapter "
                              "(adapter_config.json)")
        _ensure_template(tmp)
    return out_dir


def _merge_adapter(adapter: Path, out: Path) -> None:
    from jessy.generation.open import merged_adapter

    try:
        model, tok, _ = merged_adapter(adapter)
    except ValueError as e:
        raise ExportError(f"merge: {e}") from None
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)


def _ensure_template(out: Path) -> None:
    """jessy's chat template beside the weights, so apply_chat_template works anywhere."""
    from jessy.data.template import CHAT_TEMPLATE

    (out / "chat_template.jinja").write_text(CHAT_TEMPLATE, encoding="utf-8")
