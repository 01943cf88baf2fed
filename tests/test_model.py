import hashlib
import math

import pytest
import torch

from jessy.data.template import encode, with_system
from jessy.model.resolve import ModelNotFound, packaged_gguf, resolve_base

CONV = [{"role": "user", "content": "I had a rough day."},
        {"role": "assistant", "content": "I'm sorry. Want to tell me what happened?"}]


def test_tiny_gemma3_runs_a_real_forward_and_backward(tiny_model_dir, tokenizer):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert type(model).__name__ == "Gemma3ForCausalLM"
    assert model.config.vocab_size == len(tok) == len(tokenizer)
    enc = encode(tokenizer, with_system(CONV, "Be warm."))
    ids = torch.tensor([enc["input_ids"]])
    out = model(input_ids=ids, labels=torch.tensor([enc["labels"]]))
    assert math.isfinite(out.loss.item())
    out.loss.backward()
    assert model.model.embed_tokens.weight.grad is not None
    # chance level for a random model over the real 262k vocabulary
    assert abs(out.loss.item() - math.log(len(tok))) < 1.0


def test_resolve_local_dirs_and_errors(tiny_model_dir, tmp_path, monkeypatch):
    assert resolve_base(str(tiny_model_dir)) == str(tiny_model_dir)
    with pytest.raises(ModelNotFound, match="without config.json"):
        resolve_base(str(tmp_path))
    with pytest.raises(ModelNotFound, match="not an HF model directory or a .gguf"):
        resolve_base(str(tmp_path / "missing.gguf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFound, match="offline"):
        resolve_base("google/gemma-3-270m")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert resolve_base("google/gemma-3-270m") == "google/gemma-3-270m"


@pytest.mark.slow
def test_packaged_270m_converts_faithfully(tokenizer):
    """The cached safetensors model computes the same logits as transformers' GGUF loader."""
    from transformers import AutoModelForCausalLM

    gguf = packaged_gguf()
    converted = AutoModelForCausalLM.from_pretrained(resolve_base("gemma3-270m"))
    assert sum(p.numel() for p in converted.parameters()) == pytest.approx(268e6, rel=0.01)
    reference = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    enc = encode(tokenizer, with_system(CONV, "Be warm."))
    ids = torch.tensor([enc["input_ids"]])
    with torch.no_grad():
        a, b = converted(input_ids=ids).logits, reference(input_ids=ids).logits
    assert torch.allclose(a, b, atol=1e-4)
    # a local .gguf path resolves through the same conversion
    digest = hashlib.sha256(gguf.read_bytes()).hexdigest()[:12]
    assert resolve_base(str(gguf)).endswith(f"{gguf.stem}-{digest}")
