"""Loss values worked out by hand (log sigmoid(x) = -log(1 + e^-x))."""

import inspect
import math

import pytest
import torch

from hafrm.objectives.losses import (
    POLICY_LOSSES,
    PolicyLogps,
    PolicyLossOutput,
    PolicyLossSpec,
    ResponseLogps,
    bradley_terry_loss,
    build_implicit_reward,
    build_policy_loss,
    hinge_loss,
    ipo_loss,
    mean_logp_reward,
    reward_centering_loss,
    sft_loss,
    sigmoid_loss,
    simpo_loss,
)


def t(*xs):
    return torch.tensor(xs, dtype=torch.float32)


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


# Two pairs. Policy: chosen -10, -20; rejected -12, -15. Reference: chosen -11, -18; rejected -11, -16.
# (logp_w - ref_w) - (logp_l - ref_l): pair 0: (1) - (-1) = 2; pair 1: (-2) - (1) = -3.
LP = PolicyLogps(t(-10, -20), t(-12, -15), t(-11, -18), t(-11, -16), t(5, 10), t(4, 3))


def test_bradley_terry_by_hand():
    # r_w - r_l = 1.5 and -0.5: losses softplus(-1.5), softplus(0.5)
    got = bradley_terry_loss(t(2.0, 0.0), t(0.5, 0.5))
    assert torch.allclose(got, t(softplus(-1.5), softplus(0.5)), atol=1e-6)


def test_bradley_terry_margin_is_subtracted():
    got = bradley_terry_loss(t(2.0), t(0.5), margin=t(1.0))  # -logsigmoid(1.5 - 1.0)
    assert got.item() == pytest.approx(softplus(-0.5), abs=1e-6)


def test_zero_rewards_give_log2():
    assert bradley_terry_loss(t(0.0), t(0.0)).item() == pytest.approx(math.log(2), abs=1e-7)


def test_reward_centering():
    assert torch.allclose(reward_centering_loss(t(1.0, -2.0), t(2.0, 1.0)), t(9.0, 1.0))


def test_sigmoid_dpo_by_hand():
    out = sigmoid_loss(LP, beta=0.1)  # -logsigmoid(0.1 * 2), -logsigmoid(0.1 * -3)
    assert torch.allclose(out.losses, t(softplus(-0.2), softplus(0.3)), atol=1e-6)
    # implicit rewards beta * (logp - ref)
    assert torch.allclose(out.chosen_rewards, t(0.1, -0.2), atol=1e-6)
    assert torch.allclose(out.rejected_rewards, t(-0.1, 0.1), atol=1e-6)


def test_ipo_by_hand():
    out = ipo_loss(LP, beta=0.5)  # (h - 1/(2*0.5))^2 = (2 - 1)^2, (-3 - 1)^2
    assert torch.allclose(out.losses, t(1.0, 16.0))


def test_hinge_by_hand():
    out = hinge_loss(LP, beta=0.25)  # relu(1 - 0.25*2) = 0.5, relu(1 + 0.75) = 1.75
    assert torch.allclose(out.losses, t(0.5, 1.75))


def test_simpo_by_hand_is_reference_free():
    lp = LP._replace(ref_chosen=None, ref_rejected=None)
    out = simpo_loss(lp, beta=2.0, simpo_gamma=0.5)
    # pair 0: 2*(-10/5) - 2*(-12/4) = -4 + 6 = 2 -> -logsigmoid(2 - 0.5)
    # pair 1: 2*(-20/10) - 2*(-15/3) = -4 + 10 = 6 -> -logsigmoid(6 - 0.5)
    assert torch.allclose(out.losses, t(softplus(-1.5), softplus(-5.5)), atol=1e-6)


def test_sft_is_mean_chosen_nll():
    out = sft_loss(LP)  # 10/5, 20/10
    assert torch.allclose(out.losses, t(2.0, 2.0))


def test_reference_losses_refuse_missing_reference():
    with pytest.raises(ValueError, match="reference"):
        sigmoid_loss(LP._replace(ref_chosen=None), beta=0.1)


def test_registry_marks_reference_needs():
    assert {n for n, s in POLICY_LOSSES.items() if not s.needs_reference} == {"simpo", "sft"}
    assert set(POLICY_LOSSES) == {"sigmoid", "ipo", "hinge", "simpo", "sft"}
    built = build_policy_loss("sigmoid", {"beta": 0.1, "simpo_gamma": 0.5})
    assert torch.allclose(built(LP).losses, sigmoid_loss(LP, 0.1).losses)


HYPERPARAMETERS = {"beta": 0.1, "simpo_gamma": 0.5}


def test_losses_are_per_example():
    for name in POLICY_LOSSES:
        out = build_policy_loss(name, HYPERPARAMETERS)(LP)
        assert out.losses.shape == (2,), name


def test_registry_implicit_rewards_match_the_losses():
    lp = LP
    for name, spec in POLICY_LOSSES.items():
        out = build_policy_loss(name, HYPERPARAMETERS)(lp)
        ref = lp.ref_chosen if spec.needs_reference else None
        reward = build_implicit_reward(name, HYPERPARAMETERS)
        assert torch.allclose(reward(ResponseLogps(lp.chosen, ref, lp.chosen_len)), out.chosen_rewards), name
    sft_reward = build_implicit_reward("sft", HYPERPARAMETERS)
    assert torch.allclose(sft_reward(ResponseLogps(t(-10.0), None, t(5.0))), t(-2.0))  # mean logp


def _keywords(fn) -> set[str]:
    return set(list(inspect.signature(fn).parameters)[1:])  # all but the log-probs


def test_declared_params_are_exactly_what_each_loss_and_reward_receive():
    for name, spec in POLICY_LOSSES.items():
        assert _keywords(spec.fn) == set(spec.params), name
        assert _keywords(spec.implicit_reward) == set(spec.reward_params), name
        assert set(spec.reward_params) <= set(spec.params), name
        assert build_policy_loss(name, HYPERPARAMETERS).keywords == {p: HYPERPARAMETERS[p] for p in spec.params}
    assert build_policy_loss("sft", HYPERPARAMETERS).keywords == {}  # SFT takes no hyperparameter


def test_losses_build_from_a_config_as_from_a_mapping():
    from hafrm.config import HafConfig

    cfg = HafConfig(loss="simpo", beta=2.0, simpo_gamma=0.5)
    assert build_policy_loss("simpo", cfg).keywords == {"beta": 2.0, "simpo_gamma": 0.5}
    lp = LP._replace(ref_chosen=None, ref_rejected=None)
    from_cfg, from_map = build_policy_loss("simpo", cfg)(lp), build_policy_loss("simpo", cfg.to_dict())(lp)
    assert torch.equal(from_cfg.losses, simpo_loss(lp, beta=2.0, simpo_gamma=0.5).losses)
    assert torch.equal(from_cfg.losses, from_map.losses)


def _scaled_sft(lp: PolicyLogps, toy_scale: float) -> PolicyLossOutput:
    out = sft_loss(lp)
    return PolicyLossOutput(toy_scale * out.losses, out.chosen_rewards, out.rejected_rewards)


def test_a_new_loss_with_a_new_hyperparameter_is_one_registry_entry(monkeypatch):
    spec = PolicyLossSpec(fn=_scaled_sft, params=("toy_scale",), implicit_reward=mean_logp_reward,
                          reward_params=(), needs_reference=False, help="toy")  # fmt: skip
    monkeypatch.setitem(POLICY_LOSSES, "toy", spec)
    out = build_policy_loss("toy", {"toy_scale": 3.0, "beta": 0.1})  # only the declared one is passed
    assert torch.allclose(out(LP).losses, t(6.0, 6.0))  # 3 * mean chosen NLL (2, 2)
    reward = build_implicit_reward("toy", {"toy_scale": 3.0})
    assert torch.allclose(reward(LP.chosen_side()), t(-2.0, -2.0))
    with pytest.raises(KeyError, match="toy_scale"):
        build_policy_loss("toy", {"beta": 0.1})  # a declared hyperparameter must be given


def test_policy_loss_spec_is_keyword_only():
    with pytest.raises(TypeError):
        PolicyLossSpec(sft_loss, (), mean_logp_reward, (), False, "sft")  # type: ignore[misc]
