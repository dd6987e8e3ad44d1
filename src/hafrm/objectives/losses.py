"""Pairwise losses as pure functions on per-sequence tensors; the caller reduces.

Every function returns per-example values (shape `(B,)`), so tests can check them by hand and
the trainer can weight, mask or average them. Rewards returned for logging are detached.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


class PolicyLogps(NamedTuple):
    """Summed response log-probs of the policy (and reference), plus response lengths."""

    chosen: Tensor  # (B,)
    rejected: Tensor  # (B,)
    ref_chosen: Tensor | None  # (B,) or None for reference-free losses
    ref_rejected: Tensor | None
    chosen_len: Tensor  # (B,) response tokens
    rejected_len: Tensor


class PolicyLossOutput(NamedTuple):
    losses: Tensor  # (B,)
    chosen_rewards: Tensor  # (B,) implicit rewards, detached
    rejected_rewards: Tensor


def bradley_terry_loss(chosen_rewards: Tensor, rejected_rewards: Tensor, margin: Tensor | None = None) -> Tensor:
    """-log sigmoid(r_w - r_l - margin): the reward-model loss. `margin` is per pair or None."""
    diff = chosen_rewards.float() - rejected_rewards.float()
    if margin is not None:
        diff = diff - margin.float()
    return -F.logsigmoid(diff)


def reward_centering_loss(chosen_rewards: Tensor, rejected_rewards: Tensor) -> Tensor:
    """(r_w + r_l)^2 (Eisenstein et al. 2023): pulls the mean reward toward zero."""
    return (chosen_rewards.float() + rejected_rewards.float()) ** 2


def reference_implicit_reward(logps: Tensor, ref: Tensor | None, lengths: Tensor, beta: float) -> Tensor:
    """beta * (logp - ref): the implicit reward of DPO, IPO and hinge."""
    if ref is None:
        raise ValueError("this policy loss needs reference log-probs")
    return beta * (logps - ref)


def length_normalised_reward(logps: Tensor, ref: Tensor | None, lengths: Tensor, beta: float) -> Tensor:
    """beta * logp / |y|: SimPO's reference-free implicit reward."""
    return beta * logps / lengths.clamp(min=1)


def mean_logp_reward(logps: Tensor, ref: Tensor | None, lengths: Tensor, beta: float) -> Tensor:
    """logp / |y|: the mean response log-likelihood, the implicit reward of the SFT regulariser."""
    return logps / lengths.clamp(min=1)


def _ref_logratios(lp: PolicyLogps) -> Tensor:
    if lp.ref_chosen is None or lp.ref_rejected is None:
        raise ValueError("this policy loss needs reference log-probs")
    return (lp.chosen - lp.ref_chosen) - (lp.rejected - lp.ref_rejected)


def _ref_rewards(lp: PolicyLogps, beta: float) -> tuple[Tensor, Tensor]:
    return (
        reference_implicit_reward(lp.chosen, lp.ref_chosen, lp.chosen_len, beta).detach(),
        reference_implicit_reward(lp.rejected, lp.ref_rejected, lp.rejected_len, beta).detach(),
    )


def sigmoid_loss(lp: PolicyLogps, beta: float) -> PolicyLossOutput:
    """DPO: -log sigmoid(beta * ((logp_w - ref_w) - (logp_l - ref_l)))."""
    losses = -F.logsigmoid(beta * _ref_logratios(lp))
    return PolicyLossOutput(losses, *_ref_rewards(lp, beta))


def ipo_loss(lp: PolicyLogps, beta: float) -> PolicyLossOutput:
    """IPO (Azar et al. 2023): (h - 1/(2 beta))^2 on summed log-ratios h."""
    losses = (_ref_logratios(lp) - 1.0 / (2.0 * beta)) ** 2
    return PolicyLossOutput(losses, *_ref_rewards(lp, beta))


def hinge_loss(lp: PolicyLogps, beta: float) -> PolicyLossOutput:
    """SLiC hinge: max(0, 1 - beta * h)."""
    losses = torch.relu(1.0 - beta * _ref_logratios(lp))
    return PolicyLossOutput(losses, *_ref_rewards(lp, beta))


def simpo_loss(lp: PolicyLogps, beta: float, gamma: float) -> PolicyLossOutput:
    """SimPO (Meng et al. 2024), reference-free: -log sigmoid(beta*(avg_w - avg_l) - gamma)."""
    chosen = length_normalised_reward(lp.chosen, None, lp.chosen_len, beta)
    rejected = length_normalised_reward(lp.rejected, None, lp.rejected_len, beta)
    losses = -F.logsigmoid(chosen - rejected - gamma)
    return PolicyLossOutput(losses, chosen.detach(), rejected.detach())


def sft_loss(lp: PolicyLogps) -> PolicyLossOutput:
    """GRM-style regulariser: mean negative log-likelihood of the chosen response tokens.

    Its implicit reward is the mean response log-likelihood, for both sides.
    """
    chosen = mean_logp_reward(lp.chosen, None, lp.chosen_len, 1.0)
    rejected = mean_logp_reward(lp.rejected, None, lp.rejected_len, 1.0)
    return PolicyLossOutput(-chosen, chosen.detach(), rejected.detach())


@dataclass(frozen=True)
class PolicyLossSpec:
    """A registered policy loss: how to build it from config, and whether it needs `ref`."""

    build: Callable[[float, float], Callable[[PolicyLogps], PolicyLossOutput]]
    needs_reference: bool
    help: str
    implicit: Callable[[Tensor, Tensor | None, Tensor, float], Tensor] = reference_implicit_reward


POLICY_LOSSES: dict[str, PolicyLossSpec] = {
    "sigmoid": PolicyLossSpec(lambda beta, gamma: lambda lp: sigmoid_loss(lp, beta), True, "DPO (default)"),
    "ipo": PolicyLossSpec(lambda beta, gamma: lambda lp: ipo_loss(lp, beta), True, "IPO"),
    "hinge": PolicyLossSpec(lambda beta, gamma: lambda lp: hinge_loss(lp, beta), True, "SLiC"),
    "simpo": PolicyLossSpec(
        lambda beta, gamma: lambda lp: simpo_loss(lp, beta, gamma),
        False,
        "SimPO, reference-free, length-normalised (uses simpo_gamma)",
        length_normalised_reward,
    ),
    "sft": PolicyLossSpec(
        lambda beta, gamma: lambda lp: sft_loss(lp), False, "SFT on the chosen response (GRM)", mean_logp_reward
    ),
}


def build_policy_loss(name: str, beta: float, simpo_gamma: float) -> Callable[[PolicyLogps], PolicyLossOutput]:
    """Look `name` up in POLICY_LOSSES (names are validated when the config is built)."""
    return POLICY_LOSSES[name].build(beta, simpo_gamma)
