"""Padding-free packing: packed rows give the same rewards, log-probs, losses and gradients as padding."""

import pytest
import torch

from hafrm.config import HafConfig
from hafrm.data.tokenize import PairCollator, PairTokenizer, pack_rows, pair_features
from hafrm.modeling.hybrid import HybridRewardModel
from hafrm.objectives.haf import HybridObjective, step_metrics
from helpers import make_pairs, tiny_backbone


def test_pack_rows_layout_by_hand():
    b = pack_rows([[5, 6, 7], [8, 9], [4, 4, 4, 4]], starts=[1, 1, 2], pad_id=0, row_length=5)
    # first fit in order: row 0 = seq 0 + seq 1 (5 tokens), row 1 = seq 2 + one pad
    assert b["input_ids"].tolist() == [[5, 6, 7, 8, 9], [4, 4, 4, 4, 0]]
    assert b["position_ids"].tolist() == [[0, 1, 2, 0, 1], [0, 1, 2, 3, 0]]
    assert b["segment_ids"].tolist() == [[0, 0, 0, 1, 1], [2, 2, 2, 2, -1]]
    assert b["response_mask"].tolist() == [[0, 1, 1, 0, 1], [0, 0, 1, 1, 0]]
    assert b["seq_ends"].tolist() == [[0, 2], [0, 4], [1, 3]]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("pack_length", [48, 4096])  # several rows, and everything in one row
def test_packed_equals_padded_losses_and_gradients(arch, attn, pack_length, tokenizer):
    backbone = tiny_backbone(arch, len(tokenizer), seed=1, layers=2)
    backbone.config._attn_implementation = attn
    model = HybridRewardModel(backbone)
    torch.nn.init.normal_(model.reward_head.weight, std=0.5)
    model.train()  # dropout is 0 in these configs; gradients flow as in training
    tok = PairTokenizer(tokenizer, 512, 256).tokenize(make_pairs(5))
    ref = torch.randn(len(tok.pairs), 2) - 20.0
    features = pair_features(tok.pairs, ref)
    objective = HybridObjective(HafConfig())

    def run(collator):
        model.zero_grad()
        out = objective(model, collator(features))
        out.loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return out, grads

    padded, g_pad = run(PairCollator(tokenizer.pad_token_id))
    packed, g_pack = run(PairCollator(tokenizer.pad_token_id, pack_length=pack_length))
    assert torch.allclose(packed.loss, padded.loss, atol=1e-5)
    for name in ("loss/bt", "loss/policy", "logps/chosen", "logps/rejected", "reward_head/chosen"):
        assert step_metrics(packed)[name] == pytest.approx(step_metrics(padded)[name], abs=1e-4), name
    assert g_pad.keys() == g_pack.keys()
    for name, g in g_pad.items():
        assert (g_pack[name] - g).abs().max() < 1e-4, name


def test_packed_evaluation_equals_padded(tokenizer):
    from hafrm.evaluation.evaluate import evaluate_pairs

    model = HybridRewardModel(tiny_backbone("llama", len(tokenizer), seed=2, layers=2))
    torch.nn.init.normal_(model.reward_head.weight, std=0.5)
    tok = PairTokenizer(tokenizer, 512, 256).tokenize(make_pairs(7))
    features = pair_features(tok.pairs, torch.randn(len(tok.pairs), 2) - 20.0)
    results = {
        packing: evaluate_pairs(
            model, HafConfig(packing=packing, pack_length=64, per_device_eval_batch_size=3), tok.pairs, features, 0
        )
        for packing in (False, True)
    }
    padded, packed = results[False], results[True]
    assert (packed.reward_chosen - padded.reward_chosen).abs().max() < 1e-4
    assert (packed.implicit_rejected - padded.implicit_rejected).abs().max() < 1e-4
    for key in ("reward_head/accuracy", "implicit/accuracy", "loss", "loss/policy"):
        assert packed.metrics[key] == pytest.approx(padded.metrics[key], abs=1e-4), key
