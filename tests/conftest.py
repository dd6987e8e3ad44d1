"""Shared fixtures: the SmolLM2 tokenizer, tiny model folders."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from hafrm.modeling.backbone import prepare_embedded
from helpers import save_tiny_reward_model, tiny_backbone

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
    """Tests write reference caches to a temporary HAFRM_CACHE; the embedded model is linked in."""
    real = prepare_embedded()  # the user's cache: converted once, then reused
    cache = tmp_path_factory.mktemp("hafrm-cache")
    (cache / "models").mkdir()
    (cache / "models" / real.name).symlink_to(real)
    old = os.environ.get("HAFRM_CACHE")
    os.environ["HAFRM_CACHE"] = str(cache)
    yield cache
    if old is None:
        os.environ.pop("HAFRM_CACHE", None)
    else:
        os.environ["HAFRM_CACHE"] = old


@pytest.fixture(scope="session")
def embedded_dir(isolated_cache) -> Path:
    return prepare_embedded()


@pytest.fixture(scope="session")
def tokenizer(embedded_dir):
    return AutoTokenizer.from_pretrained(embedded_dir)


@pytest.fixture(params=["llama", "qwen2", "mistral", "gemma", "phi3"])
def arch(request) -> str:
    return request.param


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer) -> Path:
    """A saved tiny random Llama with the real tokenizer: a model folder for CLI tests."""
    path = tmp_path_factory.mktemp("tiny-llama")
    tiny_backbone("llama", len(tokenizer), layers=8).save_pretrained(path)  # freeze tests go up to 8
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_rm_dir(tmp_path_factory, tokenizer) -> Path:
    """A hafrm model folder: a tiny random Llama, a random reward head and stored score statistics."""
    return save_tiny_reward_model(tmp_path_factory.mktemp("tiny-rm"), tokenizer)
