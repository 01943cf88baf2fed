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


@pytest.fixture(scope="session")
def seeds():
    """The bundled hand-written seed conversations."""
    from jessy.data.formats import read_file
    from jessy.data.prepare import bundled_seed_files

    return [r for p in bundled_seed_files() for r in read_file(p, "messages").rows]


@pytest.fixture(scope="session")
def gates(persona, seeds):
    """Quality gates calibrated on the seeds."""
    from jessy.config import GatesConfig
    from jessy.data.gates import Gates

    return Gates(persona, GatesConfig(), seeds)
