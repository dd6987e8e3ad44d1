"""Prefix sharing: one segment [prompt | chosen | rejected] per pair gives what two sequences give."""

import json
import logging

import pytest
import torch
from typer.testing import CliRunner

from hafrm.apps.cli import app
from hafrm.config import HafConfig
from hafrm.data.shared import balanced_rows, first_fit, pack_shared_rows, shares_prompt
from hafrm.data.tokenize import PairCollator, PairTokenizer, TokenizedPair, pair_features
from hafrm.modeling.hybrid import HybridRewardModel
from hafrm.objectives.haf import HybridObjective, step_metrics
from hafrm.training.recipe import sharing_blocker
from helpers import make_pairs, tiny_backbone


def test_first_fit_keeps_order_and_gives_a_long_item_its_own_row():
    assert first_fit([3, 2, 4, 9, 1], row_length=5) == [[0, 1], [2, 4], [3]]


def test_balanced_rows_spread_the_items_so_the_longest_row_is_shorter():
    # first fit: [6, 4] and [3] -> rows padded to 10; spread: [6] and [4, 3] -> padded to 7
    assert first_fit([6, 4, 3], row_length=10) == [[0, 1], [2]]
    assert balanced_rows([6, 4, 3], row_length=10) == [[0], [1, 2]]
    assert balanced_rows([5, 5, 5, 5, 2], row_length=12) == [[0, 1, 4], [2, 3]]  # no shorter spread: first fit's
    assert balanced_rows([3, 2, 4, 9, 1], row_length=5) == [[0, 1], [2, 4], [3]]  # the long item alone
    assert balanced_rows([4, 4], row_length=10) == [[0, 1]]  # one row: nothing to spread


def test_shared_layout_by_hand():
    # pair 0 shares its prompt [5, 6]: one segment; pair 1's prompts differ: two segments
    b = pack_shared_rows(
        chosen=[[5, 6, 7, 8], [3, 4, 1]], rejected=[[5, 6, 9], [3, 5, 2]],
        chosen_starts=[2, 2], rejected_starts=[2, 2], pad_id=0, row_length=5,
    )  # fmt: skip
    assert b["shared"].tolist() == [True, False]
    # segments: [5 6 | 7 8 | 9] (5 tokens), [3 4 1], [3 5 2]: first fit gives three rows
    assert b["input_ids"].tolist() == [[5, 6, 7, 8, 9], [3, 4, 1, 0, 0], [3, 5, 2, 0, 0]]
    assert b["position_ids"][0].tolist() == [0, 1, 2, 3, 2]  # the rejected branch continues from the prompt
    a = b["attention"][0].int().tolist()  # row j: what token j sees
    assert a == [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 0, 0, 1]]
    assert b["attention"][1, 3].int().tolist() == [0, 0, 0, 1, 0]  # padding sees itself only
    # sequences: 0 = pair 0 chosen, 1 = pair 1 chosen, 2 = pair 0 rejected, 3 = pair 1 rejected
    assert b["seq_ends"].tolist() == [[0, 3], [1, 2], [0, 4], [2, 2]]
    # the rejected branch's first token (9) is predicted from the prompt's last position (column 1)
    entries = list(zip(b["logp_seq"].tolist(), b["logp_rows"].tolist(), b["logp_cols"].tolist(),
                       b["logp_targets"].tolist(), strict=True))  # fmt: skip
    assert entries == [(0, 0, 1, 7), (0, 0, 2, 8), (2, 0, 1, 9), (1, 1, 1, 1), (3, 2, 1, 2)]
    # per segment: row, start, first length (prompt included), second length, shared prompt length
    assert b["segments"].tolist() == [[0, 0, 4, 1, 2], [1, 0, 3, 0, 0], [2, 0, 3, 0, 0]]


def test_a_pair_shares_only_identical_prompt_tokens_and_needs_two_responses():
    assert shares_prompt([1, 2, 3], [1, 2, 4], 2, 2)
    assert not shares_prompt([1, 2, 3], [1, 9, 4], 2, 2)  # differ inside the prompt
    assert not shares_prompt([1, 2, 3], [1, 2, 3, 4], 2, 3)  # prompts of other lengths
    assert not shares_prompt([1, 2], [1, 2, 3], 2, 2)  # the chosen has no response


def _features_with_one_unshared(tokenizer):
    """Six pairs' features; the last one's rejected side has another prompt token, so it cannot share."""
    tok = PairTokenizer(tokenizer, 512, 256).tokenize(make_pairs(6))
    features = pair_features(tok.pairs, torch.randn(len(tok.pairs), 2) - 20.0)
    odd = dict(features[-1])
    odd["rejected_ids"] = odd["rejected_ids"][:3] + [odd["rejected_ids"][3] + 1] + odd["rejected_ids"][4:]
    return [*features[:-1], odd]


def _skip_windowed(backbone):
    """The tiny Mistral's 16-token sliding window: the shared layout does not apply it, so training
    turns sharing off for it (test_sharing_is_off_for_a_sliding_window_shorter_than_max_length)."""
    if sharing_blocker(backbone.config, 512):
        pytest.skip("sliding window shorter than the sequences: prefix sharing is turned off for such models")


def test_sharing_is_off_for_a_sliding_window_shorter_than_max_length(tokenizer, tmp_path, caplog):
    """The shared layout's mask would let a token see past the window (measured: another loss), so a
    model with a window below max_length trains with sharing off, and says so."""
    for arch in ("llama", "qwen2", "gemma", "phi3"):
        assert sharing_blocker(tiny_backbone(arch, len(tokenizer)).config, 512) is None, arch
    mistral = tiny_backbone("mistral", len(tokenizer))
    assert "sliding window of 16 tokens" in sharing_blocker(mistral.config, 512)
    assert sharing_blocker(mistral.config, 16) is None  # the window never bites
    mistral.config.sliding_window = None
    assert sharing_blocker(mistral.config, 512) is None
    folder = tmp_path / "mistral"
    tiny_backbone("mistral", len(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    out = tmp_path / "run"
    with caplog.at_level(logging.WARNING, logger="hafrm"):
        result = CliRunner().invoke(app, ["train", "--model", str(folder), "--builtin-pairs", "48", "--max-steps", "2",
                                          "--precision", "fp32", "--output-dir", str(out)])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "prefix sharing off: the model attends within a sliding window of 16 tokens" in caplog.text
    metrics = json.loads((out / "metrics.json").read_text())
    assert "train/prefix_sharing/shared_pairs" not in metrics


def _run(model, objective, collator, features):
    model.zero_grad()
    out = objective(model, collator(features))
    out.loss.backward()
    return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("pack_length", [64, 4096])  # several rows, and everything in one row
def test_prefix_shared_equals_packed_and_padded_losses_and_gradients(arch, attn, pack_length, tokenizer):
    backbone = tiny_backbone(arch, len(tokenizer), seed=1, layers=2)
    _skip_windowed(backbone)
    backbone.config._attn_implementation = attn
    model = HybridRewardModel(backbone)
    torch.nn.init.normal_(model.reward_head.weight, std=0.5)
    model.train()
    tok = PairTokenizer(tokenizer, 512, 256).tokenize(make_pairs(5))
    ref = torch.randn(len(tok.pairs), 2) - 20.0
    features = pair_features(tok.pairs, ref)
    objective = HybridObjective(HafConfig())
    pad = tokenizer.pad_token_id
    padded, g_pad = _run(model, objective, PairCollator(pad), features)
    packed, g_pack = _run(model, objective, PairCollator(pad, pack_length=pack_length), features)
    shared, g_shared = _run(model, objective, PairCollator(pad, pack_length=pack_length, prefix_sharing=True), features)
    for name in ("loss/bt", "loss/policy", "logps/chosen", "logps/rejected", "reward_head/chosen"):
        assert step_metrics(shared)[name] == pytest.approx(step_metrics(packed)[name], abs=1e-4), name
        assert step_metrics(shared)[name] == pytest.approx(step_metrics(padded)[name], abs=1e-4), name
    assert torch.allclose(shared.scores.reward_chosen, packed.scores.reward_chosen, atol=1e-4)
    assert torch.allclose(shared.scores.reward_rejected, packed.scores.reward_rejected, atol=1e-4)
    assert torch.allclose(shared.scores.logps_rejected, packed.scores.logps_rejected, atol=1e-4)
    assert g_shared.keys() == g_pack.keys() == g_pad.keys()
    for name, g in g_pack.items():
        assert (g_shared[name] - g).abs().max() < 1e-4, name


def test_pairs_with_and_without_a_shared_prompt_mix_in_one_batch(tokenizer):
    model = HybridRewardModel(tiny_backbone("llama", len(tokenizer), seed=3, layers=2))
    torch.nn.init.normal_(model.reward_head.weight, std=0.5)
    features = _features_with_one_unshared(tokenizer)
    shared_batch = PairCollator(tokenizer.pad_token_id, pack_length=128, prefix_sharing=True)(features)
    assert shared_batch["shared"].tolist() == [True] * 5 + [False]
    objective = HybridObjective(HafConfig())
    packed, g_pack = _run(model, objective, PairCollator(tokenizer.pad_token_id, pack_length=128), features)
    shared, g_shared = _run(model, objective, lambda f: shared_batch, features)
    assert torch.allclose(shared.losses, packed.losses, atol=1e-5)
    for name, g in g_pack.items():
        assert (g_shared[name] - g).abs().max() < 1e-4, name


def test_the_check_fails_when_the_rejected_branch_may_see_the_chosen(tokenizer):
    model = HybridRewardModel(tiny_backbone("llama", len(tokenizer), seed=4, layers=2))
    torch.nn.init.normal_(model.reward_head.weight, std=0.5)
    tok = PairTokenizer(tokenizer, 512, 256).tokenize(make_pairs(3))
    seqs_c = [p.chosen_ids for p in tok.pairs]
    seqs_r = [p.rejected_ids for p in tok.pairs]
    starts_c = [p.chosen_prompt_len for p in tok.pairs]
    starts_r = [p.rejected_prompt_len for p in tok.pairs]

    def rewards(isolate):
        b = pack_shared_rows(seqs_c, seqs_r, starts_c, starts_r, tokenizer.pad_token_id, 4096, isolate)
        with torch.no_grad():
            return model(b["input_ids"], position_ids=b["position_ids"], attention=b["attention"],
                         seq_ends=b["seq_ends"]).rewards  # fmt: skip

    with torch.no_grad():
        alone = torch.stack([model(torch.tensor([s]), torch.ones(1, len(s), dtype=torch.long)).rewards[0]
                             for s in seqs_c + seqs_r])  # fmt: skip
    assert torch.allclose(rewards(True), alone, atol=1e-5)
    leaky = rewards(False)
    assert torch.allclose(leaky[:3], alone[:3], atol=1e-5)  # the chosen branch is unaffected either way
    assert (leaky[3:] - alone[3:]).abs().max() > 1e-3  # the rejected one reads the chosen tokens


# states computed from the shared rows at the first step, or filled before it, each sequence whole or
# each shared pair in one piece
@pytest.mark.parametrize("warm", [None, "whole", "shared"])
def test_prefix_shared_through_the_frozen_prefix_cache_equals_the_full_forward(arch, warm, tokenizer, tmp_path):
    from hafrm.modeling.prefix import PrefixCache, fill

    model = HybridRewardModel(tiny_backbone(arch, len(tokenizer), seed=5, layers=3))
    _skip_windowed(model.backbone)
    torch.nn.init.normal_(model.reward_head.weight, std=0.5)
    model.freeze_bottom(2)
    model.train()
    features = _features_with_one_unshared(tokenizer)
    objective = HybridObjective(HafConfig())
    shared = PairCollator(tokenizer.pad_token_id, pack_length=96, prefix_sharing=True)
    full, g_full = _run(model, objective, shared, features)
    cache = PrefixCache(2)
    model.attach_prefix_cache(cache)
    if warm:
        pairs = [TokenizedPair(**{k: f[k] for k in ("chosen_ids", "rejected_ids", "chosen_prompt_len",
                                                    "rejected_prompt_len")}, margin=None, source="", tag="", index=0)
                 for f in features]  # fmt: skip
        fill(model, pairs, tmp_path, "model-x", tokenizer.pad_token_id, pack_length=96, prefix_sharing=warm == "shared")
    cached, g_cached = _run(model, objective, shared, features)
    assert cache.hits == (12 if warm else 0) and cache.misses == (0 if warm else 12)
    assert len(cache.prompts) == (0 if warm == "whole" else 5)  # the unshared pair's sequences are whole
    again, _ = _run(model, objective, shared, features)  # now every state is read
    model.detach_prefix_cache()
    assert torch.allclose(cached.losses, full.losses, atol=1e-5)
    assert torch.allclose(again.losses, full.losses, atol=1e-5)
    assert torch.allclose(cached.scores.logps_rejected, full.scores.logps_rejected, atol=1e-4)
    assert g_cached.keys() == g_full.keys()
    for name, g in g_full.items():
        assert (g_cached[name] - g).abs().max() < 1e-4, name


def test_tokenised_pairs_of_the_built_in_task_share_their_prompts(tokenizer):
    from hafrm.data.builtin import generate_pairs

    tok = PairTokenizer(tokenizer, 512, 256).tokenize(generate_pairs(30, seed=0))
    assert all(shares_prompt(p.chosen_ids, p.rejected_ids, p.chosen_prompt_len, p.rejected_prompt_len)
               for p in tok.pairs)  # fmt: skip


@pytest.mark.parametrize("freeze", [0, 5])
def test_training_with_prefix_sharing_equals_training_without(tiny_model_dir, tmp_path, freeze):
    from hafrm.training.recipe import train

    def run(sharing, name, freeze):
        cfg = HafConfig(
            model=str(tiny_model_dir), freeze_layers=freeze, builtin_pairs=24, per_device_train_batch_size=4,
            max_steps=3, prefix_sharing=sharing, output_dir=str(tmp_path / name), precision="fp32", logging_steps=1,
        )  # fmt: skip
        return train(cfg, save=False)

    shared, packed = run(True, "shared", freeze), run(False, "packed", freeze)
    n = shared.train_pairs
    assert shared.metrics["train/prefix_sharing/shared_pairs"] == n  # the built-in task's pairs all share
    assert shared.metrics["train/prefix_sharing/unshared_pairs"] == 0
    assert "train/prefix_sharing/shared_pairs" not in packed.metrics
    if freeze:  # through the frozen-prefix cache, the references too, holding each prompt once
        assert shared.metrics["train/prefix_cache/hits"] > 0
        assert shared.metrics["train/prefix_cache/mib"] < 0.8 * packed.metrics["train/prefix_cache/mib"]
    losses = [[r["loss"] for r in result.log_history if "loss" in r] for result in (shared, packed)]
    assert losses[0] and losses[0] == pytest.approx(losses[1], abs=1e-5)  # the same steps
    for key in ("eval/reward_head/accuracy", "eval/loss", "eval/reward_head/margin", "eval/logps/chosen"):
        assert shared.metrics[key] == pytest.approx(packed.metrics[key], abs=1e-4), key


def test_prefix_sharing_is_on_by_default_and_only_with_packing():
    assert HafConfig().shares_prefixes
    assert not HafConfig(packing=False).shares_prefixes  # padded rows: each sequence whole
    assert not HafConfig(prefix_sharing=False).shares_prefixes


def test_evaluation_in_the_shared_layout_equals_the_packed_one(tokenizer):
    from hafrm.evaluation.evaluate import evaluate_pairs

    model = HybridRewardModel(tiny_backbone("llama", len(tokenizer), seed=2, layers=2))
    torch.nn.init.normal_(model.reward_head.weight, std=0.5)
    tok = PairTokenizer(tokenizer, 512, 256).tokenize(make_pairs(7))
    features = pair_features(tok.pairs, torch.randn(len(tok.pairs), 2) - 20.0)
    shared, packed = (evaluate_pairs(model, HafConfig(prefix_sharing=s, pack_length=96), tok.pairs, features,
                                     tokenizer.pad_token_id) for s in (True, False))  # fmt: skip
    assert torch.allclose(shared.reward_chosen, packed.reward_chosen, atol=1e-5)
    assert torch.allclose(shared.reward_rejected, packed.reward_rejected, atol=1e-5)
    assert torch.allclose(shared.implicit_rejected, packed.implicit_rejected, atol=1e-5)
    for key in ("loss", "loss/bt", "loss/policy", "reward_head/accuracy", "implicit/accuracy"):
        assert shared.metrics[key] == pytest.approx(packed.metrics[key], abs=1e-5), key
