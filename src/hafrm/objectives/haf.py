"""The hybrid objective: one forward over `[chosen; rejected]`, BT + alpha * policy loss.

The objective returns the step's loss parts; `step_metrics` turns them into the logged metrics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from hafrm import distributed
from hafrm.heads import HEADS
from hafrm.modeling.hybrid import HybridOutput, HybridRewardModel, model_inputs
from hafrm.objectives.accuracy import accuracy
from hafrm.objectives.losses import (
    PolicyLogps,
    PolicyLossOutput,
    bradley_terry_loss,
    build_policy_loss,
    reward_centering_loss,
)

if TYPE_CHECKING:  # the objective reads a config's fields; config imports the loss registry from here
    from hafrm.config import HafConfig

# How alpha moves over training: the share of it applied at each point.
ALPHA_SCHEDULES = ("constant", "warmup", "decay")
AUTO_ALPHA = "auto"  # `alpha: auto`: set from the two losses as training goes (`AutoAlpha`)


def alpha_factor(schedule: str, progress: float | None) -> float:
    """The share of alpha applied at `progress` (0 = first step, 1 = last); None = outside training."""
    if progress is None or schedule == "constant":
        return 1.0
    progress = min(max(progress, 0.0), 1.0)
    return progress if schedule == "warmup" else 1.0 - progress


class AutoAlpha:
    """alpha = running mean of the BT loss / running mean of the policy loss.

    Uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018) learns a weight per loss,
    `exp(-s_i) * L_i + s_i`, whose optimum in s_i is `log L_i`: each loss weighted by 1 / itself.
    Relative to the BT loss's weight that is alpha = L_bt / L_policy. hafrm uses that optimum in
    closed form, with exponential running means of the (detached) batch losses for L_i, instead of
    two more parameters to learn at a learning rate of their own; the BT loss keeps weight 1, so
    the reward head's step size is the Baseline's (AdamW hardly sees a common scale of the loss).
    Both losses start at log 2 (zero reward head, policy = reference), so alpha starts at 1.
    """

    def __init__(self, decay: float = 0.9):
        self.decay = decay
        self.bt: float | None = None  # running means; None before the first training step
        self.policy: float | None = None

    @property
    def alpha(self) -> float:
        if self.bt is None or self.policy is None:
            return 1.0
        return self.bt / max(self.policy, 1e-8)

    def update(self, bt: float, policy: float) -> None:
        """Take in one training batch's mean losses."""
        if self.bt is None or self.policy is None:
            self.bt, self.policy = bt, policy
        else:
            self.bt = self.decay * self.bt + (1 - self.decay) * bt
            self.policy = self.decay * self.policy + (1 - self.decay) * policy

    def state_dict(self) -> dict[str, float | None]:
        return {"decay": self.decay, "bt": self.bt, "policy": self.policy}

    def load_state_dict(self, state: dict[str, float | None]) -> None:
        self.decay, self.bt, self.policy = float(state["decay"]), state["bt"], state["policy"]


@dataclass(frozen=True, kw_only=True)
class PairScores:
    """Per-pair outputs of one step, detached, for metrics and evaluation."""

    reward_chosen: Tensor  # (B,) reward head
    reward_rejected: Tensor
    implicit_chosen: Tensor | None = None  # (B,) implicit reward of the policy head, if computed
    implicit_rejected: Tensor | None = None
    logps_chosen: Tensor | None = None
    logps_rejected: Tensor | None = None


@dataclass(frozen=True, kw_only=True)
class LossParts:
    """One step's loss and its per-pair parts (detached, all but `loss`)."""

    loss: Tensor  # scalar, mean over pairs, with grad
    losses: Tensor  # (B,) per-pair total loss
    bt: Tensor  # (B,) Bradley-Terry loss of the reward head
    centering: Tensor | None = None  # (B,) reward-centering loss, if weighted in
    policy: Tensor | None = None  # (B,) policy loss, if computed
    alpha: float | None = None  # the policy loss's weight this step, in modes that weight it by alpha
    scores: PairScores


def policy_weight(cfg: HafConfig, progress: float | None) -> float:
    """The weight of the policy loss at `progress` (share of training done; None: outside training)."""
    weight = cfg.policy_weight
    if cfg.mode_spec.uses_alpha:
        weight *= alpha_factor(cfg.alpha_schedule, progress)
    return weight


class HybridObjective:
    """The configured loss of a collated batch, as `LossParts`."""

    def __init__(self, cfg: HafConfig):
        self.cfg = cfg
        self.policy_loss = build_policy_loss(cfg.loss, cfg)
        self.auto_alpha = AutoAlpha() if cfg.auto_alpha and cfg.mode_spec.uses_alpha else None

    def policy_ready(self, batch: dict[str, Tensor]) -> bool:
        """Whether this batch can produce the policy loss (reference log-probs present if needed)."""
        return not self.cfg.needs_reference or "ref_chosen" in batch

    def __call__(
        self,
        model: HybridRewardModel,
        batch: dict[str, Tensor],
        with_policy: bool | None = None,
        progress: float | None = None,  # share of training done, for `alpha_schedule`; None: full alpha
    ) -> LossParts:
        if with_policy is None:
            with_policy = self.cfg.needs_policy
        if with_policy and not self.policy_ready(batch):
            raise ValueError(f"loss {self.cfg.loss!r} needs reference log-probs but the batch has none")
        out = model(**model_inputs(batch, with_logps=with_policy))  # padded or packed rows
        return self.loss_parts(out, batch, with_policy, progress)

    def loss_parts(
        self, out: HybridOutput, batch: dict[str, Tensor], with_policy: bool, progress: float | None
    ) -> LossParts:
        """The loss of one forward over `[chosen; rejected]` (the policy loss only `with_policy`)."""
        cfg = self.cfg
        B = out.rewards.shape[0] // 2
        r_w, r_l = out.rewards[:B], out.rewards[B:]  # (B,) each
        margin = batch.get("margin") if cfg.use_margin else None
        bt = bradley_terry_loss(r_w, r_l, margin)
        total = cfg.reward_weight * bt
        centering = None
        if cfg.center_rewards_coefficient > 0:
            centering = reward_centering_loss(r_w, r_l)
            total = total + cfg.reward_weight * cfg.center_rewards_coefficient * centering
        lp = pol = alpha = None
        if with_policy:
            lp = _policy_logps(out, batch, B)
            pol = self.policy_loss(lp)
            weight = policy_weight(cfg, progress)
            if self.auto_alpha is not None:
                if progress is not None:  # a training step: its losses (every rank's) move the running means
                    means = [bt.detach().mean().item(), pol.losses.detach().mean().item()]
                    self.auto_alpha.update(*distributed.mean_over_ranks(means))
                weight *= self.auto_alpha.alpha
            if cfg.mode_spec.uses_alpha:
                alpha = weight
            if weight > 0:
                total = total + weight * pol.losses
        return LossParts(
            loss=total.mean(),
            losses=total.detach(),
            bt=bt.detach(),
            centering=None if centering is None else centering.detach(),
            policy=None if pol is None else pol.losses.detach(),
            alpha=alpha,
            scores=_pair_scores(r_w, r_l, lp, pol),
        )


def _policy_logps(out: HybridOutput, batch: dict[str, Tensor], B: int) -> PolicyLogps:
    return PolicyLogps(
        chosen=out.logps[:B],
        rejected=out.logps[B:],
        ref_chosen=batch.get("ref_chosen"),
        ref_rejected=batch.get("ref_rejected"),
        chosen_len=out.response_lengths[:B],
        rejected_len=out.response_lengths[B:],
    )


def _pair_scores(r_w: Tensor, r_l: Tensor, lp: PolicyLogps | None, pol: PolicyLossOutput | None) -> PairScores:
    if lp is None or pol is None:
        return PairScores(reward_chosen=r_w.detach(), reward_rejected=r_l.detach())
    return PairScores(
        reward_chosen=r_w.detach(),
        reward_rejected=r_l.detach(),
        implicit_chosen=pol.chosen_rewards,
        implicit_rejected=pol.rejected_rewards,
        logps_chosen=lp.chosen.detach(),
        logps_rejected=lp.rejected.detach(),
    )


def step_metrics(parts: LossParts) -> dict[str, float]:
    """The logged metrics of one step, under TRL's names where TRL has one."""
    metrics: dict[str, float] = {"loss/bt": parts.bt.mean().item()}
    if parts.centering is not None:
        metrics["loss/centering"] = parts.centering.mean().item()
    if parts.alpha is not None:
        metrics["alpha"] = parts.alpha
    if parts.policy is not None:
        metrics.update(_policy_metrics(parts.policy, parts.scores))
    metrics.update(_reward_metrics(parts.scores))
    metrics["loss"] = parts.loss.item()
    return metrics


def _reward_metrics(s: PairScores) -> dict[str, float]:
    head = HEADS["reward"]
    return {
        f"{head}/chosen": s.reward_chosen.mean().item(),
        f"{head}/rejected": s.reward_rejected.mean().item(),
        f"{head}/accuracy": accuracy(s.reward_chosen, s.reward_rejected).mean().item(),
        f"{head}/margin": (s.reward_chosen - s.reward_rejected).mean().item(),
    }


def _policy_metrics(policy_losses: Tensor, s: PairScores) -> dict[str, float]:
    ic, ir = s.implicit_chosen, s.implicit_rejected
    acc = accuracy(ic, ir).mean().item()
    return {
        "loss/policy": policy_losses.mean().item(),
        "rewards/chosen": ic.mean().item(),  # TRL's names: implicit rewards of the policy head
        "rewards/rejected": ir.mean().item(),
        "rewards/accuracies": acc,
        "rewards/margins": (ic - ir).mean().item(),
        f"{HEADS['implicit']}/accuracy": acc,
        "logps/chosen": s.logps_chosen.mean().item(),
        "logps/rejected": s.logps_rejected.mean().item(),
    }


@torch.no_grad()
def mean_metrics(rows: list[dict[str, float]], weights: list[int]) -> dict[str, float]:
    """Weighted mean of per-batch metric dicts (weights = pairs per batch)."""
    keys = {k for r in rows for k in r}
    out = {}
    for k in sorted(keys):
        pairs = [(r[k], w) for r, w in zip(rows, weights, strict=True) if k in r]
        out[k] = sum(v * w for v, w in pairs) / max(1, sum(w for _, w in pairs))
    return out
