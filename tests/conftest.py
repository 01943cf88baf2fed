"""Shared fixtures: the real Gemma tokenizer and a tiny random Gemma 3 built from a config."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tokenizer():
    from jessy.model.resolve import load_tokenizer

    return load_tokenizer("gemma3-270m")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from jessy.model.tiny import build_tiny_gemma3

    return build_tiny_gemma3(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def persona():
    from jessy.persona import load_persona

    return load_persona("jessy")
