"""Model mechanics on tiny random backbones of five families (Llama, Qwen2, Mistral, Gemma, Phi-3)."""

import pytest
import torch
import torch.nn.functional as F

from hafrm.data.tokenize import PairCollator, PairTokenizer, pair_features
from hafrm.modeling.hybrid import HybridRewardModel, last_token_index, response_logps
from hafrm.modeling.prefix import PrefixCache
from helpers import make_pairs, tiny_backbone


def _model(arch, tokenizer, seed=0):
    m = HybridRewardModel(tiny_backbone(arch, len(tokenizer), seed))
    torch.nn.init.normal_(m.reward_head.weight, std=0.5)  # non-zero so rewards differ by input
    return m.eval()


def _batch(tokenizer, side="right", n=4):
    tok = PairTokenizer(tokenizer, 512, 256).tokenize(make_pairs(n))
    return tok, PairCollator(tokenizer.pad_token_id, side)(pair_features(tok.pairs, None))


def test_reward_head_zero_initialised_fp32(tokenizer):
    m = HybridRewardModel(tiny_backbone("llama", len(tokenizer)))
    assert m.reward_head.weight.dtype == torch.float32
    assert m.reward_head.weight.abs().sum() == 0
    assert m.reward_head.bias is None  # like transformers' seq-cls `score`: an export scores the same


def test_last_token_index_left_and_right():
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert last_token_index(mask).tolist() == [2, 4, 4]


def test_rewards_identical_left_right_padding_and_alone(arch, tokenizer):
    """Pad == eos here (both <|im_end|>): rewards must come from the real last token only."""
    assert tokenizer.pad_token_id == tokenizer.eos_token_id
    m = _model(arch, tokenizer)
    tok, right = _batch(tokenizer, "right")
    _, left = _batch(tokenizer, "left")
    with torch.no_grad():
        r_right = m(right["input_ids"], right["attention_mask"]).rewards
        r_left = m(left["input_ids"], left["attention_mask"]).rewards
        seqs = [p.chosen_ids for p in tok.pairs] + [p.rejected_ids for p in tok.pairs]
        alone = torch.stack([m(torch.tensor([s]), torch.ones(1, len(s), dtype=torch.long)).rewards[0] for s in seqs])
    assert right["attention_mask"].sum() < right["attention_mask"].numel()  # padding really present
    assert torch.allclose(r_right, alone, atol=1e-5)
    assert torch.allclose(r_left, alone, atol=1e-5)


def test_reward_ignores_trailing_eos_padding(tokenizer):
    """Appending pad (== eos) tokens under a zero mask must not move the reward."""
    m = _model("llama", tokenizer)
    ids = torch.tensor([[5, 6, 7, 8]])
    padded = torch.tensor([[5, 6, 7, 8, tokenizer.eos_token_id, tokenizer.eos_token_id]])
    with torch.no_grad():
        a = m(ids, torch.ones_like(ids)).rewards
        b = m(padded, torch.tensor([[1, 1, 1, 1, 0, 0]])).rewards
    assert torch.allclose(a, b, atol=1e-5)


def _naive_logps(m, batch):
    logits = m.backbone(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        position_ids=(batch["attention_mask"].cumsum(-1) - 1).clamp(min=0),
    ).logits.float()  # (2B, T, V): fine for a tiny model
    logp = F.log_softmax(logits[:, :-1], -1).gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
    return (logp * batch["response_mask"][:, 1:]).sum(-1)


def test_chunked_logps_equal_full_logits(arch, tokenizer):
    m = _model(arch, tokenizer)
    _, batch = _batch(tokenizer, "right")
    with torch.no_grad():
        expected = _naive_logps(m, batch)
        for chunk in (1, 7, 4096):
            m.logprob_chunk_size = chunk
            got = m(batch["input_ids"], batch["attention_mask"], batch["response_mask"]).logps
            assert torch.allclose(got, expected, atol=1e-5), chunk


@pytest.mark.parametrize("keep_bytes", [0, 2**30])  # recomputed in backward, or kept
def test_chunked_logps_gradients_match_full_logits(tokenizer, keep_bytes):
    m = _model("llama", tokenizer)
    m.keep_logits_bytes = keep_bytes
    _, batch = _batch(tokenizer, "right", n=2)
    _naive_logps(m, batch).sum().backward()
    expected = {n: p.grad.clone() for n, p in m.backbone.named_parameters() if p.grad is not None}
    m.zero_grad()
    m.logprob_chunk_size = 3
    m(batch["input_ids"], batch["attention_mask"], batch["response_mask"]).logps.sum().backward()
    for n, p in m.backbone.named_parameters():
        if n in expected:
            rel = (p.grad - expected[n]).norm() / expected[n].norm()  # fp32 round-off only:
            assert rel < 1e-5, (n, rel)  # element-wise, a single embedding entry can be off by ~4e-5


def test_response_lengths_count_response_tokens_only(tokenizer):
    tok, batch = _batch(tokenizer, "left", n=2)
    out = response_logps(
        torch.zeros(*batch["input_ids"].shape, 4),
        torch.zeros(len(tokenizer), 4),
        batch["input_ids"],
        batch["response_mask"],
    )
    want = [len(p.chosen_ids) - p.chosen_prompt_len for p in tok.pairs]
    want += [len(p.rejected_ids) - p.rejected_prompt_len for p in tok.pairs]
    assert out[1].tolist() == want


@pytest.mark.parametrize(("n", "frozen"), [(3, 3), (8, 8), (-3, 5), (-8, 0), (-10, 0), (0, 0)])
def test_freeze_bottom_counts_from_the_top_when_negative(n, frozen):
    model = HybridRewardModel(tiny_backbone("llama", 64, layers=8))
    assert model.freeze_bottom(n) == frozen
    layers = model.decoder().layers
    assert [any(p.requires_grad for p in layer.parameters()) for layer in layers] == [False] * frozen + [True] * (
        8 - frozen
    )
    assert model.backbone.get_input_embeddings().weight.requires_grad == (frozen == 0)
    assert all(p.requires_grad for p in model.reward_head.parameters())


def test_freezing_more_layers_than_the_decoder_has_names_both():
    with pytest.raises(ValueError, match="cannot freeze 9 layers: the decoder has 8 layers"):
        HybridRewardModel(tiny_backbone("llama", 64, layers=8)).freeze_bottom(9)


def test_options_are_constructor_arguments_and_the_prefix_cache_attaches(tokenizer):
    default = HybridRewardModel(tiny_backbone("llama", len(tokenizer)))
    assert (default.logprob_chunk_size, default.keep_logits_bytes) == (512, 512 * 2**20)
    m = HybridRewardModel(tiny_backbone("llama", len(tokenizer)), logprob_chunk_size=3, keep_logits_bytes=0)
    assert (m.logprob_chunk_size, m.keep_logits_bytes) == (3, 0)
    assert m.prefix_cache is None and m.detach_prefix_cache() is None
    cache = PrefixCache(1)
    m.attach_prefix_cache(cache)
    assert m.prefix_cache is cache
    assert m.detach_prefix_cache() is cache and m.prefix_cache is None
