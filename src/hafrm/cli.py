"""The `hafrm` command: train, eval, score, prepare-model. User errors exit 2 with one line."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from hafrm.config import HafConfig, field_help
from hafrm.errors import HafError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Train, evaluate and serve HaF reward models.",
)
console = Console(stderr=True)
H = field_help


def _fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def _build_config(config: Path | None, overrides: dict[str, Any]) -> HafConfig:
    base = HafConfig.from_yaml(config).to_dict() if config else {}
    base.update({k: v for k, v in overrides.items() if v is not None and v != []})
    return HafConfig.from_dict(base)


@app.command()
def train(
    config: Path | None = typer.Option(None, "--config", help="YAML file of HafConfig fields."),
    mode: str | None = typer.Option(None, help=H("mode")),
    alpha: float | None = typer.Option(None, help=H("alpha")),
    beta: float | None = typer.Option(None, help=H("beta")),
    loss: str | None = typer.Option(None, help=H("loss")),
    model: str | None = typer.Option(None, help=H("model")),
    data: list[str] | None = typer.Option(None, help=H("data")),
    eval_data: list[str] | None = typer.Option(None, help=H("eval_data")),
    output_dir: str | None = typer.Option(None, help=H("output_dir")),
    max_steps: int | None = typer.Option(None, help=H("max_steps")),
    save_steps: int | None = typer.Option(None, help=H("save_steps")),
    eval_steps: int | None = typer.Option(None, help=H("eval_steps")),
    select_by: str | None = typer.Option(None, help=H("select_by")),
    learning_rate: float | None = typer.Option(None, help=H("learning_rate")),
    batch_size: int | None = typer.Option(None, help=H("per_device_train_batch_size")),
    builtin_pairs: int | None = typer.Option(None, help=H("builtin_pairs")),
    precision: str | None = typer.Option(None, help=H("precision")),
    seed: int | None = typer.Option(None, help=H("seed")),
    freeze_layers: int | None = typer.Option(None, help=H("freeze_layers")),
    cache_dir: str | None = typer.Option(None, help=H("cache_dir")),
    resume: bool = typer.Option(False, "--resume", help=H("resume")),
) -> None:
    """Train a reward model. With no arguments: HaF on the built-in task, embedded SmolLM2."""
    overrides = {k: v for k, v in locals().items() if k != "config"}  # option name == HafConfig field
    overrides["per_device_train_batch_size"] = overrides.pop("batch_size")
    overrides["resume"] = resume or None
    try:
        cfg = _build_config(config, overrides)
        from hafrm.pipeline import train as run_train

        result = run_train(cfg)
    except HafError as e:
        _fail(str(e))
    print_eval_table(result.eval_result.metrics, title=f"held-out accuracy ({cfg.mode}, {result.eval_pairs} pairs)")
    m = result.metrics
    console.print(
        f"shortcut baselines on the same split (no model): longer response wins "
        f"{m['eval/shortcut/length_longer']:.3f}, shorter {m['eval/shortcut/length_shorter']:.3f}, "
        f"bag of words {m['eval/shortcut/bag_of_words']:.3f}"
    )
    console.print(
        f"trained on {result.train_pairs} pairs in {result.seconds:.0f} s ({result.precision}); "
        f"model and metrics.json in {result.output_dir}"
    )


@app.command("eval")
def eval_cmd(
    model_dir: Path = typer.Argument(..., help="A folder written by `hafrm train`."),
    data: list[str] = typer.Option(..., help="Pairs to evaluate: JSONL/JSON files, or 'builtin'."),
    out: Path | None = typer.Option(None, help="Write the metrics as JSON here."),
) -> None:
    """Pairwise accuracy of every head of a trained model, overall and per tag."""
    try:
        from hafrm.commands import evaluate_model_dir

        metrics = evaluate_model_dir(model_dir, data)
    except HafError as e:
        _fail(str(e))
    print_eval_table(metrics, title=f"accuracy of {model_dir}")
    if out:
        out.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")


@app.command()
def score(
    model_dir: Path = typer.Argument(..., help="A folder written by `hafrm train`."),
    input: Path = typer.Option(..., "--input", help="JSONL of {prompt, response} or {prompt, chosen, rejected}."),
    output: Path | None = typer.Option(None, help="Write JSONL records with scores (default: scores to stdout)."),
    head: str | None = typer.Option(None, help="reward or implicit (default: the model's own)."),
    batch_size: int = typer.Option(16, help="Sequences per forward."),
) -> None:
    """Score responses: one score per line, or the records with scores added (--output)."""
    try:
        from hafrm.commands import score_file

        lines = score_file(model_dir, input, head, batch_size)
    except HafError as e:
        _fail(str(e))
    if output:
        output.write_text("".join(json.dumps(r) + "\n" for r in lines))
        console.print(f"wrote {len(lines)} scored records to {output}")
    else:
        for r in lines:
            print(r["score"] if "score" in r else f"{r['score_chosen']}\t{r['score_rejected']}")


@app.command("prepare-model")
def prepare_model(cache_dir: str | None = typer.Option(None, help=H("cache_dir"))) -> None:
    """Convert the embedded SmolLM2 (GGUF on PyPI) into a cached safetensors folder."""
    try:
        from hafrm.models import prepare_embedded

        console.print(f"embedded model ready at {prepare_embedded(cache_dir)}")
    except HafError as e:
        _fail(str(e))


def print_eval_table(metrics: dict[str, float], title: str) -> None:
    """Accuracy per head (columns) overall and per tag (rows), to stdout."""
    heads = [h for h in ("reward_head", "implicit") if f"{h}/accuracy" in metrics]
    tags = sorted({k.split("/")[1] for k in metrics if k.startswith("tag/")})
    table = Table(title=title, caption="pairwise accuracy; ties count 0.5")
    table.add_column("subset")
    for h in heads:
        table.add_column(h, justify="right")
    for tag in tags:
        table.add_row(tag, *[f"{metrics.get(f'tag/{tag}/{h}/accuracy', float('nan')):.3f}" for h in heads])
    table.add_row("[bold]all[/]", *[f"[bold]{metrics[f'{h}/accuracy']:.3f}[/]" for h in heads])
    Console().print(table)


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    app()


if __name__ == "__main__":
    main()
