"""Test helpers: tiny random backbones and hand-made preference pairs."""

from __future__ import annotations

import torch
from transformers import (
    GemmaConfig,
    GemmaForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from hafrm.data.types import PreferencePair
from hafrm.modeling.hybrid import HybridRewardModel


def tiny_backbone(arch: str, vocab_size: int, seed: int = 0, layers: int = 2):
    torch.manual_seed(seed)
    common = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        pad_token_id=2,
        eos_token_id=2,
        bos_token_id=1,
    )
    if arch == "llama":
        return LlamaForCausalLM(LlamaConfig(**common)).eval()
    if arch == "qwen2":
        return Qwen2ForCausalLM(Qwen2Config(**common)).eval()
    if arch == "mistral":  # a sliding window shorter than the test sequences
        return MistralForCausalLM(MistralConfig(**common, sliding_window=16)).eval()
    if arch == "gemma":  # embeddings scaled by sqrt(hidden), GELU, (1 + w) RMSNorm
        return GemmaForCausalLM(GemmaConfig(**common, head_dim=8)).eval()
    if arch == "phi3":  # fused qkv and gate_up projections
        return Phi3ForCausalLM(Phi3Config(**common)).eval()
    raise ValueError(arch)


def make_pairs(n: int = 6) -> list[PreferencePair]:
    """Small hand-made pairs with varied lengths (so padding is exercised)."""
    pairs = []
    for i in range(n):
        pairs.append(
            PreferencePair(
                prompt=[{"role": "user", "content": f"What is {i} + {i + 2}?" + " Please." * (i % 3)}],
                chosen=f"The answer is {2 * i + 2}.",
                rejected=f"It is {2 * i + 3}" + ", I think" * (i % 2),
                source="hand",
                meta={"skill": "arithmetic" if i % 2 else "other"},
            )
        )
    return pairs


def save_tiny_reward_model(path, tokenizer, arch: str = "llama", meta: dict | None = None, head=None):
    """A hafrm model folder with a random reward head (scores differ by input) and reward statistics."""
    model = HybridRewardModel(tiny_backbone(arch, len(tokenizer)), reward_head=head)
    if head is None:
        torch.manual_seed(1)
        torch.nn.init.normal_(model.reward_head.weight, std=0.5)
    meta = meta or {
        "mode": "hybrid",
        "inference_head": "reward",
        "beta": 0.1,
        "reward_stats": {"reward": {"mean": 0.25, "std": 2.0, "n": 10, "data": "made up"}},
    }
    model.save_pretrained(path, model_card=meta)
    tokenizer.save_pretrained(path)
    return path
