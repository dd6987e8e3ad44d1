"""--model FILE.gguf: any GGUF file transformers can read, converted once into the cache."""

import shutil

import pytest
import torch
from safetensors.torch import load_file

from hafrm.errors import HafError
from hafrm.modeling.backbone import _gguf_file, load_backbone, resolve_model


def test_a_gguf_file_path_is_converted_once_and_loads_like_the_embedded_model(embedded_dir, tmp_path):
    """A GGUF file given by path (here a copy of the embedded one, under another name) becomes a
    plain fp32 folder in the cache (keyed by the file's path, size and time), with the weights the
    embedded conversion has; a second call reuses it."""
    gguf = tmp_path / "my-model.gguf"
    shutil.copy(_gguf_file(), gguf)
    cache = tmp_path / "cache"
    folder = resolve_model(str(gguf), cache)
    assert folder.startswith(str(cache / "models" / "gguf-my-model-"))
    mine, embedded = load_file(f"{folder}/model.safetensors"), load_file(embedded_dir / "model.safetensors")
    assert mine.keys() == embedded.keys()
    assert all(torch.equal(mine[k], embedded[k]) for k in mine)
    assert resolve_model(str(gguf), cache) == folder  # converted once
    backbone = load_backbone(str(gguf), cache)
    assert backbone.path == folder and backbone.model.config.model_type == "llama"


def test_a_file_that_is_not_gguf_gets_one_clear_error(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"not a gguf file at all" * 10)
    with pytest.raises(HafError, match=r"could not read the GGUF file .*broken\.gguf"):
        resolve_model(str(bad), tmp_path / "cache")
