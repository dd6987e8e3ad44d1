"""`hafrm rlhf` (a policy trained online against reward models, measured against gold) and
`hafrm generate` (the policy head as a generator)."""

from __future__ import annotations

import inspect
import json
import logging
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from hafrm.apps.config_options import TrustOption, build_config, config_parameters
from hafrm.apps.console import console, fail
from hafrm.errors import HafError
from hafrm.fileio import named_paths, write_text_atomic
from hafrm.rlhf.config import GROUPS, RLHFConfig
from hafrm.rlhf.generate import gold_report, sample
from hafrm.rlhf.run import RESULT_FILE, compare_rlhf, run_rlhf


def _fmt(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _interval(change: dict[str, Any] | None) -> str:
    if not change or change["delta"] is None:
        return "-"
    lo, hi = change["ci95"]
    return f"{change['delta']:+.3f} [{lo:+.3f}, {hi:+.3f}]"


def print_curves(points: list[dict[str, Any]], title: str) -> None:
    skills = sorted({s for p in points for s in p["gold_per_skill"]})
    table = Table(title=title, caption="greedy answers on the fixed held-out prompts; kl: TRL's, of the step's samples")
    for col in ["step", "reward", "gold", *skills, "kl"]:
        table.add_column(col, justify="right")
    for p in points:
        table.add_row(str(p["step"]), _fmt(p["reward"], 4), _fmt(p["gold"]),
                      *[_fmt(p["gold_per_skill"].get(s)) for s in skills], _fmt(p["kl"], 4))  # fmt: skip
    Console().print(table)


def _rlhf(config: Path | None = None, **fields: Any) -> None:
    """Train a policy online against a reward model with TRL's GRPO or RLOO trainer: greedy answers
    on fixed held-out prompts are scored by the reward model and the gold verifiers every
    eval_steps. Several --reward-model NAME=DIR: the same run against each, compared."""
    logging.getLogger("hafrm.rlhf").setLevel(logging.INFO)
    try:
        cfg = build_config(config, fields, RLHFConfig)
        models = cfg.reward_models()
        if len(models) > 1:
            record = compare_rlhf(cfg)
        else:
            result = run_rlhf(cfg)
    except HafError as e:
        fail(str(e))
    out = Path(cfg.output_dir)
    if len(models) > 1:
        for name in models:
            run = json.loads((out / name / RESULT_FILE).read_text())
            print_curves(run["points"], f"against {name}")
        table = Table(title="gold-correct rate reached", caption="paired 95 % bootstrap intervals over the prompts")
        for col in ("reward model", "gold before", "gold after", "change", "verdict"):
            table.add_column(col)
        for name, r in record["runs"].items():
            table.add_row(name, _fmt(r["gold"][0]), _fmt(r["gold"][1]), _interval(r["gold_change"]), r["verdict"])
        Console().print(table)
        for pair, change in record["final_gold_differences"].items():
            console.print(f"final gold, {pair}: {_interval(change)}", highlight=False)
        console.print(f"wrote {out / 'comparison.json'} and {out / 'comparison.png'}", highlight=False)
        return
    s = result.summary
    print_curves(result.record["points"], f"{cfg.trainer.upper()} against {result.record['reward_model']['path']}")
    console.print(
        f"reward {_interval(s['reward_change'])}, gold {_interval(s['gold_change'])} from step {s['steps'][0]} to "
        f"{s['steps'][1]}: {s['sentence']}; {result.seconds_per_step:.1f} s a step without the measurements",
        highlight=False,
    )
    console.print(f"wrote {out / RESULT_FILE} and {out / 'rlhf.png'}", highlight=False)


_rlhf.__signature__ = inspect.Signature(config_parameters(RLHFConfig, GROUPS))


def generate(
    model: list[str] = typer.Argument(
        ..., help="Causal LM folders, hafrm model folders (their LM head), or 'smollm2'; NAME=DIR names one."
    ),
    prompt: list[str] = typer.Option([], "--prompt", help="A user message to answer (repeatable)."),
    gold: bool = typer.Option(
        False, "--gold", help="Gold-correct rate of greedy answers on held-out built-in prompts."
    ),
    num_prompts: int = typer.Option(
        64, help="Built-in prompts for --gold (none of the hafrm folders trained on them)."
    ),
    num_samples: int = typer.Option(1, help="Answers per --prompt."),
    temperature: float = typer.Option(0.0, help="0: greedy."),
    max_new_tokens: int = typer.Option(32, help="Tokens per answer."),
    seed: int = typer.Option(0, help="Sampling seed."),
    out: Path | None = typer.Option(None, help="Write the answers (and --gold's report) as JSON here."),
    trust_remote_code: TrustOption = False,
) -> None:
    """Sample from a model's policy (LM) head; with --gold, compare models' greedy answers on the
    built-in task's held-out prompts by the gold verifiers."""
    if not prompt and not gold:
        fail("give --prompt TEXT (repeatable) or --gold")
    if temperature < 0 or num_samples < 1 or num_prompts < 1 or max_new_tokens < 1:
        fail("temperature must be >= 0; num_samples, num_prompts and max_new_tokens >= 1")
    record: dict[str, Any] = {}
    try:
        models = named_paths(model, "model", lambda m: m)
        if prompt:
            record["samples"] = {
                name: sample(path, prompt, num_samples, temperature, max_new_tokens, seed, trust_remote_code)
                for name, path in models.items()
            }
            for m, answers in record["samples"].items():
                for p, a in zip(prompt, answers, strict=True):
                    typer.echo("\n".join(json.dumps({"model": m, "prompt": p, "response": t}, ensure_ascii=False)
                                         for t in a))  # fmt: skip
        if gold:
            record["gold"] = gold_report(models, num_prompts, max_new_tokens, trust_remote_code)
            print_gold(record["gold"])
    except HafError as e:
        fail(str(e))
    if out:
        write_text_atomic(out, json.dumps(record, indent=2, ensure_ascii=False) + "\n")


def print_gold(report: dict[str, Any]) -> None:
    skills = sorted({s for m in report["models"].values() for s in m["gold_per_skill"]})
    table = Table(title=f"gold-correct rate of greedy answers ({report['prompts']} held-out built-in prompts)")
    for col in ["model", "all", *skills]:
        table.add_column(col, justify="right")
    for name, m in report["models"].items():
        table.add_row(name, _fmt(m["gold"]), *[_fmt(m["gold_per_skill"].get(s)) for s in skills])
    Console().print(table)
    for pair, change in report.get("differences", {}).items():
        console.print(
            f"gold, {pair}: {_interval(change)} (paired 95 % interval over the prompts)",
            highlight=False,
            soft_wrap=True,
        )
