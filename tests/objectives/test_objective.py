"""The hybrid objective: mode weighting, metrics, and accumulation invariance through the Trainer."""

import pytest
import torch

from hafrm.config import HafConfig
from hafrm.data.tokenize import PairCollator, PairTokenizer, pair_dataset, pair_features
from hafrm.modeling.hybrid import HybridRewardModel
from hafrm.objectives.haf import HybridObjective, accuracy
from hafrm.objectives.losses import PolicyLogps, bradley_terry_loss, sigmoid_loss
from hafrm.training.reference import compute_logps
from helpers import make_pairs, tiny_backbone


@pytest.fixture
def setup(tokenizer):
    torch.manual_seed(0)
    model = HybridRewardModel(tiny_backbone("llama", len(tokenizer)))
    torch.nn.init.normal_(model.reward_head.weight, std=0.5)
    tok = PairTokenizer(tokenizer, 512, 256).tokenize(make_pairs(4))
    ref = compute_logps(model, tok.pairs, tokenizer.pad_token_id) - 0.3  # a reference that differs
    batch = PairCollator(tokenizer.pad_token_id)(pair_features(tok.pairs, ref))
    return model.eval(), batch


def _by_hand(model, batch, beta):
    with torch.no_grad():
        out = model(batch["input_ids"], batch["attention_mask"], batch["response_mask"])
    B = batch["input_ids"].shape[0] // 2
    bt = bradley_terry_loss(out.rewards[:B], out.rewards[B:])
    lp = PolicyLogps(
        out.logps[:B],
        out.logps[B:],
        batch["ref_chosen"],
        batch["ref_rejected"],
        out.response_lengths[:B],
        out.response_lengths[B:],
    )
    return bt, sigmoid_loss(lp, beta).losses


@pytest.mark.parametrize(
    ("mode", "alpha", "w_bt", "w_pol"),
    [("hybrid", 0.2, 1.0, 0.2), ("hybrid", 0.7, 1.0, 0.7), ("reward", 0.2, 1.0, 0.0), ("dpo", 0.2, 0.0, 1.0)],
)
def test_mode_weights(setup, mode, alpha, w_bt, w_pol):
    model, batch = setup
    cfg = HafConfig(mode=mode, alpha=alpha, beta=0.1)
    with torch.no_grad():
        step = HybridObjective(cfg)(model, batch, with_policy=True)
    bt, pol = _by_hand(model, batch, 0.1)
    assert torch.allclose(step.losses, w_bt * bt + w_pol * pol, atol=1e-6)
    assert step.loss.item() == pytest.approx((w_bt * bt + w_pol * pol).mean().item(), abs=1e-6)


@pytest.mark.parametrize(
    ("schedule", "progress", "w_pol"),
    [("constant", 0.5, 0.4), ("warmup", 0.0, 0.0), ("warmup", 0.25, 0.1), ("decay", 0.25, 0.3), ("decay", 1.0, 0.0),
     ("decay", None, 0.4)],  # None: outside training (eval), the full alpha
)  # fmt: skip
def test_alpha_schedule_weights_the_policy_loss(setup, schedule, progress, w_pol):
    model, batch = setup
    cfg = HafConfig(mode="hybrid", alpha=0.4, alpha_schedule=schedule)
    with torch.no_grad():
        step = HybridObjective(cfg)(model, batch, progress=progress)
    bt, pol = _by_hand(model, batch, 0.1)
    assert torch.allclose(step.losses, bt + w_pol * pol, atol=1e-6)
    assert step.metrics["alpha"] == pytest.approx(w_pol)


def test_reward_mode_skips_the_lm_head(setup):
    model, batch = setup
    step = HybridObjective(HafConfig(mode="reward"))(model, batch)
    assert step.scores.implicit_chosen is None and "loss/policy" not in step.metrics


def test_metrics_use_trl_names(setup):
    model, batch = setup
    step = HybridObjective(HafConfig())(model, batch)
    for key in (
        "rewards/chosen",
        "rewards/rejected",
        "rewards/accuracies",
        "rewards/margins",
        "logps/chosen",
        "logps/rejected",
        "reward_head/accuracy",
        "implicit/accuracy",
        "loss/bt",
    ):
        assert key in step.metrics, key
    acc = accuracy(step.scores.reward_chosen, step.scores.reward_rejected).mean().item()
    assert step.metrics["reward_head/accuracy"] == pytest.approx(acc)


def test_policy_without_reference_is_an_error(setup):
    model, batch = setup
    batch = {k: v for k, v in batch.items() if not k.startswith("ref_")}
    with pytest.raises(ValueError, match="reference"):
        HybridObjective(HafConfig(loss="sigmoid"))(model, batch)
    step = HybridObjective(HafConfig(loss="simpo"))(model, batch)  # reference-free works
    assert "loss/policy" in step.metrics


def test_accuracy_counts_ties_as_half():
    assert accuracy(torch.tensor([1.0, 0.0, 2.0]), torch.tensor([0.0, 0.0, 3.0])).tolist() == [1.0, 0.5, 0.0]


def _one_step(tokenizer, tmp_path, batch_size, accumulation):
    from hafrm.training.recipe import _training_args
    from hafrm.training.trainer import HafTrainer

    torch.manual_seed(0)
    model = HybridRewardModel(tiny_backbone("llama", len(tokenizer)))
    tok = PairTokenizer(tokenizer, 512, 256).tokenize(make_pairs(2))
    ref = compute_logps(model, tok.pairs, tokenizer.pad_token_id) - 0.1
    feats = pair_features(tok.pairs, ref)
    cfg = HafConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=accumulation,
        max_steps=1,
        learning_rate=1e-3,
        warmup_ratio=0.0,
        select_by="step",
        save_steps=100,
        eval_steps=100,
        lr_scheduler_type="constant",
        max_grad_norm=1e9,
    )
    trainer = HafTrainer(
        model=model,
        args=_training_args(cfg, 2),
        train_dataset=pair_dataset(feats),
        eval_dataset=feats,
        data_collator=PairCollator(tokenizer.pad_token_id),
        haf_config=cfg,
        eval_pairs=tok.pairs,
        eval_features=feats,
        pad_token_id=tokenizer.pad_token_id,
        hafrm_meta={},
    )
    trainer.train()
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_batch2_accum1_equals_batch1_accum2(tokenizer, tmp_path):
    a = _one_step(tokenizer, tmp_path / "a", batch_size=2, accumulation=1)
    b = _one_step(tokenizer, tmp_path / "b", batch_size=1, accumulation=2)
    init = dict(HybridRewardModel(tiny_backbone("llama", len(tokenizer))).named_parameters())
    assert not torch.allclose(a["reward_head.weight"], init["reward_head.weight"])  # it did train
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-6), name
