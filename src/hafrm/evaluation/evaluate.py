"""Evaluation: pairwise accuracy of every head, overall and per tag (skill / subset / source)."""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers.utils.logging import tqdm  # the bars of the Trainer: shown in logs too

from hafrm import distributed
from hafrm.config import HafConfig
from hafrm.data.tokenize import PairCollator, TokenizedPair
from hafrm.heads import HEADS
from hafrm.modeling.batching import eval_mode, length_batches
from hafrm.modeling.hybrid import HybridRewardModel
from hafrm.objectives.accuracy import accuracy
from hafrm.objectives.haf import HybridObjective, mean_metrics, step_metrics


@dataclass(frozen=True, kw_only=True)
class EvalResult:
    metrics: dict[str, float]  # flat, e.g. "reward_head/accuracy", "accuracy", "tag/arithmetic/..."
    reward_chosen: torch.Tensor  # (N,)
    reward_rejected: torch.Tensor
    implicit_chosen: torch.Tensor | None = None
    implicit_rejected: torch.Tensor | None = None
    tags: list[str] = field(default_factory=list)
    subsets: list[str] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)  # each pair's split-group hash


@torch.no_grad()
def evaluate_pairs(
    model: HybridRewardModel,
    cfg: HafConfig,
    pairs: Sequence[TokenizedPair],
    features: list[dict[str, Any]],
    pad_token_id: int,
) -> EvalResult:
    """Score every pair with both heads (the implicit one when reference log-probs exist).

    With several processes each rank scores its share of the pairs (`hafrm.distributed.shard`)
    and every rank ends with all the scores; the loss metrics are means over pairs (each batch
    weighted by its pairs), gathered from every rank. The ranks run the same number of forwards
    (a rank with fewer batches repeats its last one, ignored), as a sharded engine needs."""
    objective = HybridObjective(cfg)
    n = len(features)
    mine = distributed.shard(n) if n >= distributed.world_size() else list(range(n))
    lengths = [len(features[i]["chosen_ids"]) + len(features[i]["rejected_ids"]) for i in mine]
    batches = [[mine[j] for j in b] for b in length_batches(lengths, cfg.per_device_eval_batch_size)]
    collate = PairCollator(pad_token_id, pack_length=cfg.pack_length if cfg.packing else None,
                           prefix_sharing=cfg.shares_prefixes)  # fmt: skip
    rw, rl, iw, il = (torch.zeros(n) for _ in range(4))
    rows, weights, have_implicit = [], [], True
    with eval_mode(model):
        for k in tqdm(range(distributed.max_over_ranks(len(batches))), desc="evaluating", leave=False):
            idx = batches[min(k, len(batches) - 1)] if batches else []
            if not idx:
                continue
            batch = collate([features[i] for i in idx])
            with_policy = objective.policy_ready(batch)
            parts = objective(model, batch, with_policy=with_policy)
            if k >= len(batches):  # a repeat, to keep the ranks' forwards in step
                continue
            rows.append(step_metrics(parts))
            weights.append(len(idx))
            s = parts.scores
            rw[idx], rl[idx] = s.reward_chosen.float().cpu(), s.reward_rejected.float().cpu()
            if s.implicit_chosen is None:
                have_implicit = False
            else:
                iw[idx], il[idx] = s.implicit_chosen.float().cpu(), s.implicit_rejected.float().cpu()
    if distributed.world_size() > 1 and n >= distributed.world_size():
        rw, rl, iw, il = (distributed.gather_rows(t) for t in (rw, rl, iw, il))
        have_implicit = distributed.all_true(have_implicit)
        rows, weights = distributed.gather_lists(rows), distributed.gather_lists(weights)
    metrics = mean_metrics(rows, weights)
    tags, subsets = [p.tag for p in pairs], [p.subset for p in pairs]
    scored = EvalResult(
        metrics=metrics,
        reward_chosen=rw,
        reward_rejected=rl,
        implicit_chosen=iw if have_implicit else None,
        implicit_rejected=il if have_implicit else None,
        tags=tags,
        subsets=subsets,
        groups=[p.group for p in pairs],
    )
    return dataclasses.replace(scored, metrics=metrics | summary_metrics(scored, cfg))


def score_stats(result: EvalResult, data: str) -> dict[str, dict[str, Any]]:
    """Per head, the mean and std of its scores over both responses of every pair: the reward
    normalisation statistics (OpenRLHF's `mean` / `std`: sample std, floored at 1e-8)."""
    out = {}
    for head, (c, r) in _head_scores(result).items():
        values = torch.cat([c, r]).double()
        std = values.std().item() if values.numel() > 1 else 0.0
        out[head] = {"mean": values.mean().item(), "std": max(std, 1e-8), "n": values.numel(), "data": data}
    return out


def _head_scores(result: EvalResult) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Head name -> (chosen, rejected) scores, for the heads that scored the pairs."""
    heads = {"reward": (result.reward_chosen, result.reward_rejected)}
    if result.implicit_chosen is not None:
        heads["implicit"] = (result.implicit_chosen, result.implicit_rejected)
    return heads


def summary_metrics(result: EvalResult, cfg: HafConfig) -> dict[str, float]:
    """Accuracy of each head overall, per tag (`tag/...`) and per subset (`subset/...`), and the
    mode's inference head as plain keys."""
    heads = {HEADS[head]: scores for head, scores in _head_scores(result).items()}  # by metric prefix
    groups: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, (t, sub) in enumerate(zip(result.tags, result.subsets or [""] * len(result.tags), strict=True)):
        groups[("tag", t)].append(i)
        if sub:
            groups[("subset", sub)].append(i)
    m: dict[str, float] = {}
    for head, (c, r) in heads.items():
        acc = accuracy(c, r)
        m[f"{head}/accuracy"] = acc.mean().item()
        for (kind, name), idx in sorted(groups.items()):
            m[f"{kind}/{name}/{head}/accuracy"] = acc[idx].mean().item()
    head = HEADS[cfg.mode_spec.inference_head]
    if head in heads:
        c, r = heads[head]
        m["accuracy"] = m[f"{head}/accuracy"]
        m["margin"] = (c - r).mean().item()
        m["reward"] = c.mean().item()
    m["pairs"] = float(len(result.tags))
    return m
