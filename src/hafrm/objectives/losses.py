"""Pairwise losses as pure functions on per-sequence tensors; the caller reduces.

Every function returns per-example values (shape `(B,)`), so tests can check them by hand and
the trainer can weight, mask or average them. Rewards returned for logging are detached.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


class ResponseLogps(NamedTuple):
    """One response per pair: summed log-probs of the policy (and reference), plus lengths."""

    logps: Tensor  # (B,)
    ref: Tensor | None  # (B,) or None for reference-free losses
    lengths: Tensor  # (B,) response tokens


class PolicyLogps(NamedTuple):
    """Summed response log-probs of the policy (and reference), plus response lengths."""

    chosen: Tensor  # (B,)
    rejected: Tensor  # (B,)
    ref_chosen: Tensor | None  # (B,) or None for reference-free losses
    ref_rejected: Tensor | None
    chosen_len: Tensor  # (B,) response tokens
    rejected_len: Tensor

    def chosen_side(self) -> ResponseLogps:
        return ResponseLogps(self.chosen, self.ref_chosen, self.chosen_len)

    def rejected_side(self) -> ResponseLogps:
        return ResponseLogps(self.rejected, self.ref_rejected, self.rejected_len)


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


def reference_implicit_reward(side: ResponseLogps, *, beta: float) -> Tensor:
    """beta * (logp - ref): the implicit reward of DPO, IPO and hinge."""
    if side.ref is None:
        raise ValueError("this policy loss needs reference log-probs")
    return beta * (side.logps - side.ref)


def length_normalised_reward(side: ResponseLogps, *, beta: float) -> Tensor:
    """beta * logp / |y|: SimPO's reference-free implicit reward."""
    return beta * side.logps / side.lengths.clamp(min=1)


def mean_logp_reward(side: ResponseLogps) -> Tensor:
    """logp / |y|: the mean response log-likelihood, the implicit reward of the SFT regulariser."""
    return side.logps / side.lengths.clamp(min=1)


def _ref_logratios(lp: PolicyLogps) -> Tensor:
    if lp.ref_chosen is None or lp.ref_rejected is None:
        raise ValueError("this policy loss needs reference log-probs")
    return (lp.chosen - lp.ref_chosen) - (lp.rejected - lp.ref_rejected)


def _ref_rewards(lp: PolicyLogps, beta: float) -> tuple[Tensor, Tensor]:
    return (
        reference_implicit_reward(lp.chosen_side(), beta=beta).detach(),
        reference_implicit_reward(lp.rejected_side(), beta=beta).detach(),
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


def simpo_loss(lp: PolicyLogps, beta: float, simpo_gamma: float) -> PolicyLossOutput:
    """SimPO (Meng et al. 2024), reference-free: -log sigmoid(beta*(avg_w - avg_l) - gamma)."""
    chosen = length_normalised_reward(lp.chosen_side(), beta=beta)
    rejected = length_normalised_reward(lp.rejected_side(), beta=beta)
    losses = -F.logsigmoid(chosen - rejected - simpo_gamma)
    return PolicyLossOutput(losses, chosen.detach(), rejected.detach())


def sft_loss(lp: PolicyLogps) -> PolicyLossOutput:
    """GRM-style regulariser: mean negative log-likelihood of the chosen response tokens.

    Its implicit reward is the mean response log-likelihood, for both sides.
    """
    chosen = mean_logp_reward(lp.chosen_side())
    rejected = mean_logp_reward(lp.rejected_side())
    return PolicyLossOutput(-chosen, chosen.detach(), rejected.detach())


@dataclass(frozen=True, kw_only=True)
class PolicyLossSpec:
    """A registered policy loss. Its hyperparameters are HafConfig fields, named in `params` and
    passed to `fn` by keyword under those names; `reward_params` likewise to `implicit_reward`.
    A new loss with a new hyperparameter is its function, its entry here and its HafConfig field.
    The defaults are the DPO family's: beta, against the reference, scored by beta*(logp - ref)."""

    fn: Callable[..., PolicyLossOutput]  # (PolicyLogps, **params) -> per-pair losses, detached rewards
    help: str
    params: tuple[str, ...] = ("beta",)
    implicit_reward: Callable[..., Tensor] = reference_implicit_reward  # (ResponseLogps, **reward_params) -> (B,)
    reward_params: tuple[str, ...] = ("beta",)
    needs_reference: bool = True


POLICY_LOSSES: dict[str, PolicyLossSpec] = {
    "sigmoid": PolicyLossSpec(fn=sigmoid_loss, help="DPO (default)"),
    "ipo": PolicyLossSpec(fn=ipo_loss, help="IPO"),
    "hinge": PolicyLossSpec(fn=hinge_loss, help="SLiC"),
    "simpo": PolicyLossSpec(
        fn=simpo_loss,
        params=("beta", "simpo_gamma"),
        implicit_reward=length_normalised_reward,
        reward_params=("beta",),
        needs_reference=False,
        help="SimPO, reference-free, length-normalised (uses simpo_gamma)",
    ),
    "sft": PolicyLossSpec(
        fn=sft_loss,
        params=(),
        implicit_reward=mean_logp_reward,
        reward_params=(),
        needs_reference=False,
        help="SFT on the chosen response (GRM)",
    ),
}


def hyperparameters(names: tuple[str, ...], values: Any) -> dict[str, Any]:
    """`names` read from `values`: a HafConfig (its attributes) or a mapping of its field names."""
    if isinstance(values, Mapping):
        return {name: values[name] for name in names}
    return {name: getattr(values, name) for name in names}


def build_policy_loss(name: str, values: Any) -> Callable[[PolicyLogps], PolicyLossOutput]:
    """Loss `name` of POLICY_LOSSES with its declared hyperparameters taken from `values` (a
    HafConfig or a mapping of its field names). Names are validated when the config is built."""
    spec = POLICY_LOSSES[name]
    return functools.partial(spec.fn, **hyperparameters(spec.params, values))


def build_implicit_reward(name: str, values: Any) -> Callable[[ResponseLogps], Tensor]:
    """The implicit reward of loss `name`, with its declared hyperparameters taken from `values`."""
    spec = POLICY_LOSSES[name]
    return functools.partial(spec.implicit_reward, **hyperparameters(spec.reward_params, values))
