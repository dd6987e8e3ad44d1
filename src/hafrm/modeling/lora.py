"""LoRA adapters on a backbone, put in place by peft (`inject_adapter_in_model`).

The adapters replace the targeted linear layers where they are, so every module path stays as it
was: the two heads, the packed and prefix-shared forward, and the frozen-prefix cache (whose
layers carry no adapters) see the same model. A saved folder holds the backbone with the adapters
merged in (it loads anywhere a plain model loads: `hafrm.load`, `AutoModelForCausalLM`, the
exports) and, in its `adapter/` subfolder, the adapters themselves in peft's format
(`adapter_config.json`, `adapter_model.safetensors`), for `PeftModel.from_pretrained(base,
FOLDER/adapter)` and for resuming. (Not at the top: transformers would then load the folder as an
adapter on its base model, not as the merged model it is.)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model, set_peft_model_state_dict
from peft.tuners.lora import LoraLayer
from safetensors.torch import load_file, save_file
from torch import nn

ADAPTER_DIR = "adapter"  # in a model folder
ADAPTER_CONFIG_FILE = "adapter_config.json"
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"
ADAPTER = "default"  # peft's adapter name
PEFT_PREFIX = "base_model.model."  # how PeftModel names a wrapped model's parameters in its files
ALL_LINEAR = "all-linear"


def target_names(layers: nn.ModuleList, first: int, prefix: str, targets: Sequence[str]) -> list[str]:
    """Full names of the linear layers of decoder layers `first`.. whose own name is in `targets`
    (every linear layer with 'all-linear'): peft matches them exactly, so no adapter lands on a
    frozen layer, the embeddings or the LM head."""
    every = ALL_LINEAR in targets
    names = []
    for i in range(first, len(layers)):
        for name, module in layers[i].named_modules():
            if isinstance(module, nn.Linear) and (every or name.rsplit(".", 1)[-1] in targets):
                names.append(f"{prefix}.{i}.{name}")
    return names


def add_adapters(
    backbone: nn.Module, layers_path: str, first_layer: int, r: int, alpha: float, dropout: float,
    targets: Sequence[str], base_model: str,
) -> LoraConfig:  # fmt: skip
    """Freeze every backbone weight and put LoRA adapters (A random, B zero: the model is unchanged
    until it trains) on the targeted linear layers of decoder layers `first_layer` and up."""
    layers = backbone.get_submodule(layers_path)
    names = target_names(layers, first_layer, layers_path, targets)
    if not names:
        raise ValueError(f"lora_target_modules {list(targets)} match no linear layer of the trained layers")
    config = LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=names, base_model_name_or_path=base_model
    )
    backbone.requires_grad_(False)
    inject_adapter_in_model(config, backbone, adapter_name=ADAPTER)  # the adapters' weights train
    return config


def lora_layers(module: nn.Module) -> dict[str, LoraLayer]:
    return {name: m for name, m in module.named_modules() if isinstance(m, LoraLayer)}


def has_adapters(module: nn.Module) -> bool:
    return bool(lora_layers(module))


@torch.no_grad()
def merged_state_dict(backbone: nn.Module) -> dict[str, torch.Tensor]:
    """The backbone's state dict with every adapter merged into its layer's weight, under the
    plain model's names (`q_proj.weight`, not `q_proj.base_layer.weight`); the live model is not
    changed. An adapter whose delta is zero (B still zero: untrained) leaves its weight as it is,
    bit for bit, so an untrained LoRA model's state equals its base model's."""
    wrapped = lora_layers(backbone)
    out = {}
    for name, tensor in backbone.state_dict().items():
        if ".lora_" in name:
            continue
        module, _, leaf = name.rpartition(".")
        owner = module.removesuffix(".base_layer")
        if owner in wrapped and module.endswith(".base_layer"):
            name = f"{owner}.{leaf}"
            if leaf == "weight":
                delta = wrapped[owner].get_delta_weight(ADAPTER).to(tensor.dtype)
                tensor = tensor + delta if delta.any() else tensor
        out[name] = tensor.detach().contiguous()
    return out


def save_adapters(backbone: nn.Module, config: LoraConfig, directory: Path) -> None:
    """The adapters in peft's format: `PeftModel.from_pretrained(base, directory)` loads them."""
    directory = directory / ADAPTER_DIR
    directory.mkdir(parents=True, exist_ok=True)
    weights = {PEFT_PREFIX + k: v.detach().contiguous().cpu() for k, v in get_peft_model_state_dict(backbone).items()}
    save_file(weights, str(directory / ADAPTER_WEIGHTS_FILE))
    config.save_pretrained(str(directory))


def load_adapters(backbone: nn.Module, directory: Path) -> None:
    """Load saved adapters into a backbone that has the same ones (a resumed run), exactly."""
    path = directory / ADAPTER_DIR / ADAPTER_WEIGHTS_FILE
    weights = {k.removeprefix(PEFT_PREFIX): v for k, v in load_file(str(path)).items()}
    result = set_peft_model_state_dict(backbone, weights, adapter_name=ADAPTER)
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise RuntimeError(f"{directory}: adapters do not match the model (unexpected {unexpected[:3]})")


def saved_config(directory: Path) -> dict[str, Any] | None:
    """The adapter config of a model folder, or None if it has no adapters."""
    path = directory / ADAPTER_DIR / ADAPTER_CONFIG_FILE
    return json.loads(path.read_text()) if path.is_file() else None
