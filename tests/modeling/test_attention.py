"""The prefix-shared mask in each attention implementation's form: the flex BlockMask lets through
exactly what the dense mask does, and the model gives the same outputs through either."""

import functools

import pytest
import torch
from torch.nn.attention.flex_attention import create_mask, flex_attention

from hafrm.data.shared import pack_shared_rows
from hafrm.data.tokenize import PairCollator, PairTokenizer, pair_features
from hafrm.modeling.attention import backbone_mask, shared_block_mask, token_layout
from hafrm.modeling.hybrid import HybridRewardModel, model_inputs
from hafrm.modeling.prefix import PrefixCache
from helpers import make_pairs, tiny_backbone


def _layout(row_length: int) -> dict[str, torch.Tensor]:
    """Two shared pairs and one whose prompts differ, in rows of `row_length` (padding included)."""
    chosen = [[5, 6, 7, 8], [3, 4, 1], [9, 9, 9, 4, 4, 4, 4]]
    rejected = [[5, 6, 9], [3, 5, 2], [9, 9, 9, 2, 2]]
    return pack_shared_rows(chosen, rejected, [2, 2, 3], [2, 2, 3], pad_id=0, row_length=row_length)


def test_token_layout_by_hand():
    b = _layout(row_length=9)
    # first fit: [5 6 | 7 8 | 9] [3 4 1] pad; [3 5 2] pad; [9 9 9 | 4 4 4 4 | 2 2]
    seg, part = token_layout(b["segments"], *b["input_ids"].shape)
    assert b["segments"].tolist() == [[0, 0, 4, 1, 2], [0, 5, 3, 0, 0], [1, 0, 3, 0, 0], [2, 0, 7, 2, 3]]
    assert seg[0].tolist() == [0, 0, 0, 0, 0, 1, 1, 1, -9]  # the padding: an id of its own
    assert part[0].tolist() == [0, 0, 1, 1, 2, 0, 0, 0, 0]  # the unshared sequence: all part 0
    assert part[2].tolist() == [0, 0, 0, 1, 1, 1, 1, 2, 2]


@pytest.mark.parametrize("row_length", [5, 9, 300])  # a row per segment, a few rows, one row (blocks of 128)
def test_block_mask_lets_through_exactly_the_dense_mask(row_length):
    b = _layout(row_length)
    R, L = b["input_ids"].shape
    block = shared_block_mask(b["segments"], R, L, "cpu")
    assert torch.equal(create_mask(block.mask_mod, R, None, L, L, device="cpu")[:, 0], b["attention"])


def test_flex_needs_the_segments():
    with pytest.raises(ValueError, match="segments"):
        backbone_mask(_layout(9)["attention"], "flex_attention")


@functools.cache
def flex_runs_here() -> str | None:
    """None where a compiled flex_attention forward runs on CPU, else why not."""
    try:
        q = torch.randn(1, 1, 16, 16)
        torch.compile(flex_attention)(q, q, q)
    except Exception as e:  # any failure: this machine cannot compile it
        return f"flex_attention does not compile here ({type(e).__name__}: {str(e).splitlines()[0]})"
    return None


@pytest.mark.parametrize("cached", [False, True])  # the full forward, and through the frozen-prefix cache
def test_flex_path_equals_the_dense_mask_path(cached, tokenizer):
    """Forward only: torch 2.13 has no flex_attention backward on CPU (CUDA has one). Compiling
    flex_attention takes about 20 s on 2 cores, the first parameter only."""
    if reason := flex_runs_here():
        pytest.skip(reason)
    model = HybridRewardModel(tiny_backbone("llama", len(tokenizer), seed=2, layers=3)).eval()
    torch.nn.init.normal_(model.reward_head.weight, std=0.5)
    tok = PairTokenizer(tokenizer, 512, 256).tokenize(make_pairs(5))
    features = pair_features(tok.pairs, torch.zeros(len(tok.pairs), 2))
    batch = model_inputs(PairCollator(tokenizer.pad_token_id, pack_length=100, prefix_sharing=True)(features))
    assert batch["input_ids"].shape[0] > 1  # several rows, padded to the longest
    outputs = {}
    for impl in ("sdpa", "flex_attention"):
        model.backbone.config._attn_implementation = impl
        if cached:
            model.attach_prefix_cache(PrefixCache(2))
        with torch.no_grad():
            outputs[impl] = model(**batch)
        model.detach_prefix_cache()
    dense, flex = outputs["sdpa"], outputs["flex_attention"]
    assert torch.allclose(flex.rewards, dense.rewards, atol=1e-5)
    assert torch.allclose(flex.logps, dense.logps, atol=1e-4)
    assert torch.equal(flex.response_lengths, dense.response_lengths)
