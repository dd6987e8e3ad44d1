"""The hybrid objective: mode weighting, metrics, and accumulation invariance through the Trainer."""

import dataclasses

import numpy as np
import pytest
import torch

from hafrm.config import HafConfig
from hafrm.data.tokenize import PairCollator, PairTokenizer, pair_dataset, pair_features
from hafrm.errors import ConfigError
from hafrm.modeling.hybrid import HybridRewardModel
from hafrm.objectives.accuracy import accuracy
from hafrm.objectives.haf import AutoAlpha, HybridObjective, LossParts, PairScores, policy_weight, step_metrics
from hafrm.objectives.losses import POLICY_LOSSES, PolicyLogps, bradley_terry_loss, sigmoid_loss
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
    assert step_metrics(step)["alpha"] == pytest.approx(w_pol)
    assert step.alpha == policy_weight(cfg, progress) == pytest.approx(w_pol)


def test_auto_alpha_is_the_ratio_of_the_running_mean_losses(setup):
    model, batch = setup
    cfg = HafConfig(mode="hybrid", alpha="auto")
    objective = HybridObjective(cfg)
    bt, pol = _by_hand(model, batch, 0.1)
    bt1, pol1 = bt.mean().item(), pol.mean().item()
    with torch.no_grad():
        first = objective(model, batch, progress=0.0)  # the first step: the means are its losses
        assert first.alpha == pytest.approx(bt1 / pol1, rel=1e-5)
        assert torch.allclose(first.losses, bt + bt1 / pol1 * pol, atol=1e-5)
        # a later step with other losses: the means move by 1 - decay = 0.1 of the way
        objective.auto_alpha.update(2.0, 0.5)
        bt_mean, pol_mean = 0.9 * (0.9 * bt1 + 0.1 * 2.0) + 0.1 * bt1, 0.9 * (0.9 * pol1 + 0.1 * 0.5) + 0.1 * pol1
        second = objective(model, batch, progress=0.5)
        assert second.alpha == pytest.approx(bt_mean / pol_mean, rel=1e-5)
        # evaluation (no progress) reads the means and leaves them as they are
        state = objective.auto_alpha.state_dict()
        ev = objective(model, batch)
        assert ev.alpha == pytest.approx(second.alpha) and objective.auto_alpha.state_dict() == state


def test_auto_alpha_starts_at_one_and_restores_its_state():
    auto = AutoAlpha()
    assert auto.alpha == 1.0  # before any step (both losses start at log 2)
    auto.update(0.6, 0.3)
    auto.update(0.5, 0.5)
    again = AutoAlpha()
    again.load_state_dict(auto.state_dict())
    assert again.alpha == auto.alpha == pytest.approx((0.9 * 0.6 + 0.1 * 0.5) / (0.9 * 0.3 + 0.1 * 0.5))


def test_auto_alpha_follows_the_alpha_schedule(setup):
    model, batch = setup
    objective = HybridObjective(HafConfig(mode="hybrid", alpha="auto", alpha_schedule="decay"))
    with torch.no_grad():
        step = objective(model, batch, progress=0.25)
    assert step.alpha == pytest.approx(0.75 * objective.auto_alpha.alpha)


@pytest.mark.parametrize("alpha", ["often", -0.5])
def test_alpha_is_a_number_or_auto(alpha):
    with pytest.raises(ConfigError, match="alpha must be"):
        HafConfig(alpha=alpha)


def test_reward_mode_skips_the_lm_head(setup):
    model, batch = setup
    step = HybridObjective(HafConfig(mode="reward"))(model, batch)
    assert step.scores.implicit_chosen is None and "loss/policy" not in step_metrics(step)
    assert step.policy is None and step.alpha is None


def test_metrics_use_trl_names(setup):
    model, batch = setup
    step = HybridObjective(HafConfig())(model, batch)
    metrics = step_metrics(step)
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
        assert key in metrics, key
    acc = accuracy(step.scores.reward_chosen, step.scores.reward_rejected).mean().item()
    assert metrics["reward_head/accuracy"] == pytest.approx(acc)


def test_policy_without_reference_is_an_error(setup):
    model, batch = setup
    batch = {k: v for k, v in batch.items() if not k.startswith("ref_")}
    with pytest.raises(ValueError, match="reference"):
        HybridObjective(HafConfig(loss="sigmoid"))(model, batch)
    step = HybridObjective(HafConfig(loss="simpo"))(model, batch)  # reference-free works
    assert "loss/policy" in step_metrics(step)


def test_accuracy_counts_ties_as_half():
    assert accuracy(torch.tensor([1.0, 0.0, 2.0]), torch.tensor([0.0, 0.0, 3.0])).tolist() == [1.0, 0.5, 0.0]


def test_accuracy_is_one_rule_for_tensors_arrays_and_numbers():
    got = accuracy(torch.tensor([3.0, -1.0, 2.0, 2.0]), torch.tensor([1.0, -1.0, 5.0, 2.0]))
    assert got.dtype == torch.float32 and got.tolist() == [1.0, 0.5, 0.0, 0.5]
    assert got.mean().item() == 0.5  # (1 + 0.5 + 0 + 0.5) / 4
    assert accuracy(np.array([0.2, 0.0, -0.0, -3.0]), 0.0).tolist() == [1.0, 0.5, 0.5, 0.0]  # -0.0 ties 0.0
    for c, r, want in ((2.0, 1.0, 1.0), (1.5, 1.5, 0.5), (-1.0, 0.0, 0.0), (7, 7, 0.5), (3, 4, 0.0)):
        got = accuracy(c, r)
        assert type(got) is float and got == want, (c, r)


def test_metrics_are_computed_from_the_loss_parts_in_trl_order(setup):
    model, batch = setup
    cfg = HafConfig(center_rewards_coefficient=0.01)
    step = HybridObjective(cfg)(model, batch, progress=0.5)
    assert isinstance(step, LossParts) and step.centering is not None and step.policy is not None
    metrics = step_metrics(step)
    assert list(metrics) == ["loss/bt", "loss/centering", "alpha", "loss/policy", "rewards/chosen",
                             "rewards/rejected", "rewards/accuracies", "rewards/margins", "implicit/accuracy",
                             "logps/chosen", "logps/rejected", "reward_head/chosen", "reward_head/rejected",
                             "reward_head/accuracy", "reward_head/margin", "loss"]  # fmt: skip
    assert metrics["loss"] == step.loss.item() and metrics["loss/bt"] == step.bt.mean().item()
    assert metrics["loss/policy"] == step.policy.mean().item()
    s = step.scores
    assert metrics["rewards/accuracies"] == metrics["implicit/accuracy"]
    assert metrics["rewards/margins"] == (s.implicit_chosen - s.implicit_rejected).mean().item()
    assert not any(t.requires_grad for t in (step.losses, step.bt, step.centering, step.policy))


def test_pair_scores_are_built_once():
    s = PairScores(reward_chosen=torch.zeros(2), reward_rejected=torch.ones(2))
    assert s.implicit_chosen is None and s.logps_rejected is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.implicit_chosen = torch.zeros(2)  # type: ignore[misc]
    with pytest.raises(TypeError):
        PairScores(torch.zeros(2), torch.ones(2))  # type: ignore[misc]


def test_a_registered_loss_runs_through_the_objective_unchanged(setup, monkeypatch):
    model, batch = setup
    monkeypatch.setitem(POLICY_LOSSES, "toy", dataclasses.replace(POLICY_LOSSES["sigmoid"], help="toy"))
    with torch.no_grad():
        toy = HybridObjective(HafConfig(loss="toy", beta=0.3))(model, batch)
        dpo = HybridObjective(HafConfig(loss="sigmoid", beta=0.3))(model, batch)
    assert torch.equal(toy.losses, dpo.losses) and torch.equal(toy.policy, dpo.policy)


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
        train_config=cfg,
        eval_pairs=tok.pairs,
        eval_features=feats,
        pad_token_id=tokenizer.pad_token_id,
        model_card={},
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
