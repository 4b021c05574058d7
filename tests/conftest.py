"""Shared fixtures: a tiny random Llama with the real SmolLM2 tokenizer (units, seconds) and the embedded base."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = Path(os.environ.get("ZOO_DATA_DIR") or SHARED_DATA)
    if not (path / "sst2").is_dir():
        pytest.fail(f"test data not found at {path}: set ZOO_DATA_DIR to the shared data folder")
    return path


@pytest.fixture(scope="session")
def embedded_base_dir() -> Path:
    """The real SmolLM2-135M-Instruct as safetensors (converted once into the cache)."""
    from zoo.base import resolve_base

    return resolve_base("smollm2-135m").path


@pytest.fixture(scope="session")
def tiny_base_dir(tmp_path_factory, embedded_base_dir) -> Path:
    """A 2-layer random Llama (hidden 64) with the real tokenizer and chat template: a full model in seconds."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(embedded_base_dir)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, tie_word_embeddings=True)
    model = LlamaForCausalLM(config)
    out = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture
def zoo_dir(tmp_path) -> Path:
    return tmp_path / "zoo"
