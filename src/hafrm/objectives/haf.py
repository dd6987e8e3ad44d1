"""The hybrid objective: one forward over `[chosen; rejected]`, BT + alpha * policy loss."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from hafrm.config import HafConfig, alpha_factor
from hafrm.modeling.hybrid import HybridRewardModel, model_inputs
from hafrm.objectives.losses import (
    PolicyLogps,
    bradley_terry_loss,
    build_policy_loss,
    reward_centering_loss,
)


@dataclass
class PairScores:
    """Per-pair outputs of one step, detached, for metrics and evaluation."""

    reward_chosen: Tensor  # (B,) reward head
    reward_rejected: Tensor
    implicit_chosen: Tensor | None  # (B,) implicit reward of the policy head, if computed
    implicit_rejected: Tensor | None
    logps_chosen: Tensor | None
    logps_rejected: Tensor | None


@dataclass
class StepOutput:
    loss: Tensor  # scalar, mean over pairs, with grad
    losses: Tensor  # (B,) per-pair total loss, detached
    scores: PairScores
    metrics: dict[str, float]


def accuracy(chosen: Tensor, rejected: Tensor) -> Tensor:
    """Per-pair accuracy: 1 if chosen scores higher, 0.5 on a tie, 0 otherwise."""
    return (chosen > rejected).float() + 0.5 * (chosen == rejected).float()


class HybridObjective:
    """Computes the configured loss and TRL-named metrics for a collated batch."""

    def __init__(self, cfg: HafConfig):
        self.cfg = cfg
        self.policy_loss = build_policy_loss(cfg.loss, cfg.beta, cfg.simpo_gamma)

    def policy_ready(self, batch: dict[str, Tensor]) -> bool:
        """Whether this batch can produce the policy loss (reference log-probs present if needed)."""
        return not self.cfg.needs_reference or "ref_chosen" in batch

    def __call__(
        self,
        model: HybridRewardModel,
        batch: dict[str, Tensor],
        with_policy: bool | None = None,
        progress: float | None = None,  # share of training done, for `alpha_schedule`; None: full alpha
    ) -> StepOutput:
        cfg = self.cfg
        if with_policy is None:
            with_policy = cfg.needs_policy
        if with_policy and not self.policy_ready(batch):
            raise ValueError(f"loss {cfg.loss!r} needs reference log-probs but the batch has none")
        out = model(**model_inputs(batch, with_logps=with_policy))  # padded or packed rows
        B = out.rewards.shape[0] // 2
        r_w, r_l = out.rewards[:B], out.rewards[B:]  # (B,) each
        margin = batch.get("margin") if cfg.use_margin else None
        bt = bradley_terry_loss(r_w, r_l, margin)
        total = cfg.reward_weight * bt
        metrics: dict[str, float] = {"loss/bt": bt.mean().item()}
        if cfg.center_rewards_coefficient > 0:
            centering = reward_centering_loss(r_w, r_l)
            total = total + cfg.reward_weight * cfg.center_rewards_coefficient * centering
            metrics["loss/centering"] = centering.mean().item()
        scores = PairScores(r_w.detach(), r_l.detach(), None, None, None, None)
        if with_policy:
            lp = PolicyLogps(
                chosen=out.logps[:B],
                rejected=out.logps[B:],
                ref_chosen=batch.get("ref_chosen"),
                ref_rejected=batch.get("ref_rejected"),
                chosen_len=out.response_lengths[:B],
                rejected_len=out.response_lengths[B:],
            )
            pol = self.policy_loss(lp)
            weight = cfg.policy_weight
            if cfg.mode_spec.uses_alpha:
                weight *= alpha_factor(cfg.alpha_schedule, progress)
                metrics["alpha"] = weight
            if weight > 0:
                total = total + weight * pol.losses
            scores.implicit_chosen, scores.implicit_rejected = pol.chosen_rewards, pol.rejected_rewards
            scores.logps_chosen, scores.logps_rejected = lp.chosen.detach(), lp.rejected.detach()
            metrics.update(_policy_metrics(pol.losses, scores))
        metrics.update(_reward_metrics(scores))
        loss = total.mean()
        metrics["loss"] = loss.item()
        return StepOutput(loss=loss, losses=total.detach(), scores=scores, metrics=metrics)


def _reward_metrics(s: PairScores) -> dict[str, float]:
    return {
        "reward_head/chosen": s.reward_chosen.mean().item(),
        "reward_head/rejected": s.reward_rejected.mean().item(),
        "reward_head/accuracy": accuracy(s.reward_chosen, s.reward_rejected).mean().item(),
        "reward_head/margin": (s.reward_chosen - s.reward_rejected).mean().item(),
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
        "implicit/accuracy": acc,
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
