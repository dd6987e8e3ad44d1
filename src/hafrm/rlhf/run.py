"""One RL run (`run_rlhf`) and a comparison of reward models (`compare_rlhf`): TRL's trainer does
the RL; a callback measures greedy answers on fixed held-out prompts against the reward model and
the gold verifiers before the first step and every `eval_steps`."""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from hafrm.data.sources import builtin_skills
from hafrm.errors import HafError
from hafrm.fileio import write_text_atomic
from hafrm.modeling.backbone import freeze_bottom_layers, load_backbone
from hafrm.rlhf.config import RLHFConfig
from hafrm.rlhf.gold import (
    PromptSplit,
    RLPrompt,
    builtin_prompt_split,
    file_prompt_split,
    gold_verdicts,
    greedy_answers,
)
from hafrm.rlhf.rewards import RemoteReward, reward_function

log = logging.getLogger(__name__)
RESULT_FILE, PLOT_FILE = "rlhf.json", "rlhf.png"


@dataclass(kw_only=True)
class EvalPoint:
    step: int
    reward: float  # mean reward-model score of the greedy answers
    gold: float | None  # share of them the gold verifiers pass
    gold_per_skill: dict[str, float]
    rewards: list[float]  # per eval prompt
    correct: list[bool | None]
    answers: list[str]
    seconds: float  # this measurement's own time
    kl: float | None = None  # TRL's logged KL of the step's training completions (beta > 0)
    train_reward: float | None = None  # TRL's mean reward of the step's training completions


@dataclass(kw_only=True)
class RLHFResult:
    output_dir: Path
    points: list[EvalPoint]
    summary: dict[str, Any]
    seconds_per_step: float
    record: dict[str, Any] = field(repr=False)


class GoldCallback(TrainerCallback):
    """Measures the policy before the first step, every `eval_steps` and after the last."""

    def __init__(self, measure: Callable[[Any, int], EvalPoint], eval_steps: int):
        self.measure, self.eval_steps, self.points = measure, eval_steps, []

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.points.append(self.measure(model, 0))

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.eval_steps == 0 or state.global_step >= state.max_steps:
            self.points.append(self.measure(model, state.global_step))


def paired_change(before: Sequence[float], after: Sequence[float], seed: int = 0, n: int = 10_000) -> dict[str, Any]:
    """Mean of after - before over the same prompts, with a 95 % percentile bootstrap interval."""
    diffs = [b - a for a, b in zip(before, after, strict=True)]
    if not diffs:
        return {"delta": None, "ci95": None, "n": 0}
    rng = random.Random(seed)
    means = sorted(sum(rng.choices(diffs, k=len(diffs))) / len(diffs) for _ in range(n))
    return {"delta": sum(diffs) / len(diffs), "ci95": [means[int(0.025 * n)], means[int(0.975 * n) - 1]],
            "n": len(diffs)}  # fmt: skip


VERDICTS = {
    "aligned": "the gold-correct rate rose with the reward",
    "hacking": "diverged: the reward rose while the gold-correct rate fell (reward hacking)",
    "reward_only": "the reward rose but the gold-correct rate did not move beyond noise",
    "reward_flat": "the reward did not rise",
    "reward_fell": "the reward fell",
}


def verdict(reward_change: dict[str, Any], gold_change: dict[str, Any] | None) -> str:
    """A key of VERDICTS from the paired intervals of the first and last measurements."""
    r_lo, r_hi = reward_change["ci95"]
    if r_hi < 0:
        return "reward_fell"
    if r_lo <= 0:
        return "reward_flat"
    if not gold_change or gold_change["ci95"] is None:
        return "reward_only"
    g_lo, g_hi = gold_change["ci95"]
    return "aligned" if g_lo > 0 else "hacking" if g_hi < 0 else "reward_only"


def prompt_split(cfg: RLHFConfig) -> PromptSplit:
    if builtin_skills(cfg.prompts) is not None:
        if cfg.prompts != "builtin":
            raise HafError(f"prompts {cfg.prompts!r}: only the whole built-in task ('builtin') or a JSONL file")
        dirs = [None] if cfg.reward_url else list(cfg.reward_models().values())
        split = builtin_prompt_split(dirs, cfg.eval_prompts, cfg.max_train_prompts)
    else:
        split = file_prompt_split(cfg.prompts, cfg.eval_prompts, cfg.max_train_prompts)
    for note in split.notes:
        log.warning(note)
    return split


def _trl_trainer(cfg: RLHFConfig, model: Any, tokenizer: Any, reward: Any, train: list[RLPrompt], out: Path,
                 callback: GoldCallback) -> Any:  # fmt: skip
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

    config_cls, trainer_cls = (GRPOConfig, GRPOTrainer) if cfg.trainer == "grpo" else (RLOOConfig, RLOOTrainer)
    args = config_cls(
        output_dir=str(out / "trainer"),
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.per_device_train_batch_size,
        num_generations=cfg.num_generations,
        max_completion_length=cfg.max_new_tokens,
        temperature=cfg.temperature,
        learning_rate=cfg.learning_rate,
        beta=cfg.beta,
        seed=cfg.seed,
        logging_steps=cfg.logging_steps,
        bf16=cfg.precision == "bf16",
        use_cpu=not torch.cuda.is_available(),
        use_vllm=False,
        report_to="none",
        save_strategy="no",
        gradient_checkpointing=False,  # TRL turns it on; a small policy on a CPU has the memory, not the time
    )
    dataset = Dataset.from_dict({"prompt": [p.messages for p in train]})
    return trainer_cls(model=model, reward_funcs=reward, args=args, train_dataset=dataset, processing_class=tokenizer,
                       callbacks=[callback])  # fmt: skip


def run_rlhf(cfg: RLHFConfig, split: PromptSplit | None = None) -> RLHFResult:
    """Train `cfg.policy` against the one reward model of `cfg`; write rlhf.json and rlhf.png."""
    (name, path), *more = cfg.reward_models().items()
    if more:
        raise HafError("run_rlhf takes one reward model; compare_rlhf runs several")
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    split = split or prompt_split(cfg)
    torch.manual_seed(cfg.seed)
    policy = load_backbone(cfg.policy, trust_remote_code=cfg.trust_remote_code)
    model, tokenizer = policy.model, policy.tokenizer
    try:
        frozen = freeze_bottom_layers(model, cfg.freeze_layers)
    except ValueError as e:
        raise HafError(f"policy {cfg.policy}: {e}") from None
    if cfg.reward_url:
        reward = RemoteReward(cfg.reward_url, cfg.reward_protocol, tokenizer, name=name)
    else:
        reward = reward_function(name, path, cfg.reward_head, cfg.normalize, cfg.trust_remote_code)
    eval_messages = [p.messages for p in split.eval]

    def measure(m: Any, step: int) -> EvalPoint:
        start = time.time()
        answers = greedy_answers(m, tokenizer, split.eval, cfg.max_new_tokens)
        rewards = [float(x) for x in reward(eval_messages, answers)]
        gold = gold_verdicts(split.eval, answers)
        point = EvalPoint(
            step=step, reward=sum(rewards) / len(rewards), gold=gold.rate, gold_per_skill=gold.per_skill,
            rewards=rewards, correct=gold.correct, answers=answers, seconds=time.time() - start,
        )  # fmt: skip
        log.info("step %d: reward %.4f, gold %s (%.0f s)", step, point.reward,
                 "-" if gold.rate is None else f"{gold.rate:.3f}", point.seconds)  # fmt: skip
        return point

    callback = GoldCallback(measure, cfg.eval_steps)
    trainer = _trl_trainer(cfg, model, tokenizer, reward, split.train, out, callback)
    start = time.time()
    trainer.train()
    train_seconds = time.time() - start
    points = callback.points
    _attach_logs(points, trainer.state.log_history, name)
    steps = trainer.state.global_step
    seconds_per_step = (train_seconds - sum(p.seconds for p in points)) / max(steps, 1)
    if cfg.save_policy:
        trainer.save_model(str(out / "policy"))
        tokenizer.save_pretrained(out / "policy")
    summary = summarise(points)
    record = {
        "config": cfg.to_dict(),
        "policy": policy.path,
        "policy_frozen_layers": frozen,
        "policy_trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "reward_model": {"name": name, "path": path, "normalized": reward.normalized},
        "trainer": cfg.trainer,
        "prompts": {
            "source": cfg.prompts,
            "train": len(split.train),
            "eval": len(split.eval),
            "excluded_as_reward_model_training": split.excluded,
            "notes": split.notes,
        },  # fmt: skip
        "steps": steps,
        "seconds_per_step": seconds_per_step,
        "train_seconds": train_seconds,
        "summary": summary,
        "points": [dataclasses.asdict(p) for p in points],
        "eval_prompts": eval_messages,
    }
    write_text_atomic(out / RESULT_FILE, json.dumps(record, indent=2) + "\n")
    plot_run(points, out / PLOT_FILE, title=f"{cfg.trainer.upper()} against {name} ({path})")
    return RLHFResult(output_dir=out, points=points, summary=summary, seconds_per_step=seconds_per_step,
                      record=record)  # fmt: skip


def _attach_logs(points: list[EvalPoint], history: list[dict[str, Any]], name: str) -> None:
    by_step = {row["step"]: row for row in history if "step" in row and "loss" in row}
    for p in points:
        row = by_step.get(p.step, {})
        p.kl = row.get("kl", 0.0 if p.step == 0 else None)
        p.train_reward = row.get("reward")


def summarise(points: list[EvalPoint]) -> dict[str, Any]:
    """First against last measurement: the reward's and the gold rate's paired changes, the verdict."""
    first, last = points[0], points[-1]
    reward_change = paired_change(first.rewards, last.rewards)
    judged = [i for i, (a, b) in enumerate(zip(first.correct, last.correct, strict=True))
              if a is not None and b is not None]  # fmt: skip
    gold_change = paired_change([float(first.correct[i]) for i in judged], [float(last.correct[i]) for i in judged])
    key = verdict(reward_change, gold_change if judged else None)
    return {
        "steps": [first.step, last.step],
        "reward": [first.reward, last.reward],
        "gold": [first.gold, last.gold],
        "gold_per_skill": [first.gold_per_skill, last.gold_per_skill],
        "reward_change": reward_change,
        "gold_change": gold_change if judged else None,
        "verdict": key,
        "sentence": VERDICTS[key],
    }


def compare_rlhf(cfg: RLHFConfig) -> dict[str, Any]:
    """The same policy, seed, prompts and steps against each reward model of `cfg`, one run each
    in output_dir/NAME; comparison.json holds the gold rate each reached and the paired
    differences of the final gold verdicts between them."""
    models = cfg.reward_models()
    split = prompt_split(cfg)  # held out from every one of them
    out = Path(cfg.output_dir)
    runs: dict[str, RLHFResult] = {}
    for name, path in models.items():
        one = dataclasses.replace(cfg, reward_model=[f"{name}={path}"], output_dir=str(out / name))
        runs[name] = run_rlhf(one, split)
    names = list(runs)
    table = {n: {k: r.summary[k] for k in ("gold", "reward", "verdict", "gold_change")} for n, r in runs.items()}
    pairs = {}
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            ca, cb = runs[a].points[-1].correct, runs[b].points[-1].correct
            judged = [k for k in range(len(ca)) if ca[k] is not None and cb[k] is not None]
            pairs[f"{a} - {b}"] = paired_change([float(cb[k]) for k in judged], [float(ca[k]) for k in judged])
    record = {"config": cfg.to_dict(), "reward_models": models, "runs": table, "final_gold_differences": pairs}
    write_text_atomic(out / "comparison.json", json.dumps(record, indent=2) + "\n")
    plot_comparison({n: r.points for n, r in runs.items()}, out / "comparison.png")
    return record


def plot_run(points: list[EvalPoint], path: Path, title: str) -> None:
    """The reward of the greedy answers (left) beside their gold-correct rate (right), per step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [p.step for p in points]
    fig, left = plt.subplots(figsize=(7, 4))
    left.plot(steps, [p.reward for p in points], "o-", color="tab:blue", label="reward model (greedy answers)")
    left.set_xlabel("step")
    left.set_ylabel("mean reward", color="tab:blue")
    if any(p.gold is not None for p in points):
        right = left.twinx()
        right.plot(steps, [p.gold for p in points], "s-", color="tab:green", label="gold-correct rate")
        for skill in points[0].gold_per_skill:
            right.plot(steps, [p.gold_per_skill.get(skill) for p in points], ":", alpha=0.6, label=skill)
        right.set_ylabel("gold-correct rate", color="tab:green")
        right.set_ylim(0, 1)
        right.legend(loc="lower right", fontsize=7)
    left.legend(loc="upper left", fontsize=7)
    left.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_comparison(runs: dict[str, list[EvalPoint]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name, points in runs.items():
        steps = [p.step for p in points]
        axes[0].plot(steps, [p.reward for p in points], "o-", label=name)
        axes[1].plot(steps, [p.gold for p in points], "s-", label=name)
    axes[0].set(xlabel="step", ylabel="mean reward (its own reward model)")
    axes[1].set(xlabel="step", ylabel="gold-correct rate", ylim=(0, 1))
    for ax in axes:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
