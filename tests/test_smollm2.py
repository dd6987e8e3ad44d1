"""Integration on the real embedded SmolLM2-135M-Instruct (slow: tens of seconds)."""

import pytest
import torch

from hafrm.config import HafConfig
from hafrm.data.builtin import generate_pairs
from hafrm.data.tokenize import PairCollator, PairTokenizer, pair_features
from hafrm.modeling.backbone import load_backbone
from hafrm.modeling.hybrid import HybridRewardModel
from hafrm.objectives.haf import HybridObjective
from hafrm.training.reference import compute_logps

pytestmark = pytest.mark.slow


def test_a_few_steps_lower_the_hybrid_loss():
    torch.manual_seed(0)
    backbone, tokenizer, _ = load_backbone("smollm2")
    model = HybridRewardModel(backbone)
    tok = PairTokenizer(tokenizer, 256, 128).tokenize(generate_pairs(6, seed=3))
    ref = compute_logps(model, tok.pairs, tokenizer.pad_token_id)
    batch = PairCollator(tokenizer.pad_token_id)(pair_features(tok.pairs, ref))
    objective = HybridObjective(HafConfig())
    opt = torch.optim.AdamW(model.parameters(), lr=2e-5)
    model.train()
    losses = []
    for _ in range(4):
        step = objective(model, batch)
        step.loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(step.loss.item())
    assert losses[0] == pytest.approx(0.6931 * 1.2, abs=1e-3)  # zero head, policy == ref: log 2 (1 + alpha)
    assert losses[-1] < losses[0] - 0.05, losses
