"""Loss values worked out by hand (log sigmoid(x) = -log(1 + e^-x))."""

import math

import pytest
import torch

from hafrm.objectives.losses import (
    POLICY_LOSSES,
    PolicyLogps,
    bradley_terry_loss,
    build_policy_loss,
    hinge_loss,
    ipo_loss,
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
    out = simpo_loss(lp, beta=2.0, gamma=0.5)
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
    built = build_policy_loss("sigmoid", beta=0.1, simpo_gamma=0.5)
    assert torch.allclose(built(LP).losses, sigmoid_loss(LP, 0.1).losses)


def test_losses_are_per_example():
    for name, spec in POLICY_LOSSES.items():
        out = spec.build(0.1, 0.5)(LP)
        assert out.losses.shape == (2,), name


def test_registry_implicit_rewards_match_the_losses():
    lp = LP
    for name, spec in POLICY_LOSSES.items():
        out = spec.build(0.1, 0.5)(lp)
        ref = lp.ref_chosen if spec.needs_reference else None
        assert torch.allclose(spec.implicit(lp.chosen, ref, lp.chosen_len, 0.1), out.chosen_rewards), name
    assert torch.allclose(POLICY_LOSSES["sft"].implicit(t(-10.0), None, t(5.0), 0.1), t(-2.0))  # mean logp
