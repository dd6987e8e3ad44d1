"""The `hafrm` command (train, eval, score, export, serve, experiment, bon, rlhf, generate, data, ...).
User errors exit 2 with one line."""

from __future__ import annotations

import inspect
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import torch
import typer
from rich.console import Console
from rich.table import Table

from hafrm import distributed
from hafrm.apps.bench import CONTENDERS, BenchSpec, run_bench
from hafrm.apps.commands import evaluate_model_dir, plot_scores, score_file
from hafrm.apps.config_options import (
    FormatOption,
    MapOption,
    OnErrorOption,
    PkuFilterOption,
    PkuLabelOption,
    TrustOption,
    build_config,
    config_parameters,
    data_options,
)
from hafrm.apps.console import console, fail, print_eval_table
from hafrm.apps.data_cli import data_app
from hafrm.apps.export import export_model
from hafrm.apps.rlhf_cli import _rlhf, generate
from hafrm.apps.server import ServerSettings, create_app
from hafrm.config import field_help
from hafrm.errors import HafError
from hafrm.evaluation.bon import BonSpec, ChatJudge, run_bon
from hafrm.evaluation.scoring import RewardModel
from hafrm.experiments import load_experiment, run_and_report, write_results
from hafrm.fileio import named_paths, write_text_atomic
from hafrm.heads import HEADS
from hafrm.modeling.backbone import prepare_embedded
from hafrm.training import recipe

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Train, evaluate and serve HaF reward models.",
)
app.add_typer(data_app, name="data")
H = field_help


def _train(config: Path | None = None, **fields: Any) -> None:
    """Train a reward model. With no arguments: HaF on the built-in task, embedded SmolLM2."""
    try:
        cfg = build_config(config, fields)
        result = recipe.train(cfg)
    except HafError as e:
        fail(str(e))
    if not distributed.is_main():  # several processes: rank 0 reports
        return
    print_eval_table(result.eval_result.metrics, title=f"held-out accuracy ({cfg.mode}, {result.eval_pairs} pairs)")
    m = result.metrics
    console.print(
        f"shortcut baselines on the same split (no model): longer response wins "
        f"{m['eval/shortcut/length_longer']:.3f}, shorter {m['eval/shortcut/length_shorter']:.3f}, "
        f"bag of words {m['eval/shortcut/bag_of_words']:.3f}"
    )
    peak = f"peak memory {m['train/peak_rss_mib']:.0f} MiB RSS" + (
        f", {m['train/peak_cuda_mib']:.0f} MiB CUDA" if "train/peak_cuda_mib" in m else ""
    )
    console.print(
        f"trained on {result.train_pairs} pairs in {result.seconds:.0f} s ({result.precision}, {peak}); "
        f"model and metrics.json in {result.output_dir}"
    )


_train.__signature__ = inspect.Signature(config_parameters())
train = app.command("train")(_train)


@app.command("eval")
def eval_cmd(
    model_dir: Path = typer.Argument(..., help="A folder written by `hafrm train`."),
    data: list[str] = typer.Option(..., help="Pairs to evaluate (any --data source of `train`), or 'builtin'."),
    out: Path | None = typer.Option(None, help="Write the metrics as JSON here."),
    data_format: FormatOption = None,
    data_map: MapOption = None,
    on_error: OnErrorOption = "raise",
    pku_label: PkuLabelOption = "safer",
    pku_safety_filter: PkuFilterOption = False,
    save_stats: bool = typer.Option(
        False, "--save-stats", help="Store each head's score mean and std on this data in the model folder."
    ),
    trust_remote_code: TrustOption = False,
) -> None:
    """Pairwise accuracy of every head of a trained model, overall, per source or skill, per subset,
    RewardBench's sections where their subsets are present; each head's score mean and std."""
    try:
        opts = data_options(data_format, data_map, pku_label, pku_safety_filter, on_error)
        metrics = evaluate_model_dir(model_dir, data, opts, save_stats=save_stats, trust_remote_code=trust_remote_code)
    except HafError as e:
        fail(str(e))
    print_eval_table(metrics, title=f"accuracy of {model_dir}")
    heads = [h for h in HEADS.values() if f"{h}/mean" in metrics]
    console.print(
        "scores: "
        + "; ".join(f"{h} mean {metrics[f'{h}/mean']:.4g}, std {metrics[f'{h}/std']:.4g}" for h in heads)
        + (f" (stored in {model_dir})" if save_stats else ""),
        highlight=False,
    )
    if out:
        write_text_atomic(out, json.dumps(metrics, indent=2, sort_keys=True) + "\n")


@app.command()
def score(
    model_dir: Path = typer.Argument(..., help="A folder written by `hafrm train`."),
    input: Path = typer.Option(..., "--input", help="JSONL of {prompt, response} or {prompt, chosen, rejected}."),
    output: Path | None = typer.Option(None, help="Write JSONL records with scores (default: scores to stdout)."),
    head: str | None = typer.Option(None, help="reward or implicit (default: the model's own)."),
    batch_size: int = typer.Option(16, help="Sequences per forward."),
    normalize: bool = typer.Option(
        False, "--normalize", help="(score - mean) / std, with the statistics stored in the model folder."
    ),
    plot: Path | None = typer.Option(None, help="Write a histogram of the scores (chosen vs rejected) as PNG."),
    trust_remote_code: TrustOption = False,
) -> None:
    """Score responses: one score per line, or the records with scores added (--output)."""
    try:
        lines = score_file(model_dir, input, head, batch_size, normalize=normalize, trust_remote_code=trust_remote_code)
        if plot:
            plot_scores(lines, plot, title=f"{model_dir.name}: {input.name}")
            console.print(f"wrote {plot}", highlight=False)
    except HafError as e:
        fail(str(e))
    if output:
        write_text_atomic(output, "".join(json.dumps(r) + "\n" for r in lines))
        console.print(f"wrote {len(lines)} scored records to {output}")
    else:
        for r in lines:
            print(r["score"] if "score" in r else f"{r['score_chosen']}\t{r['score_rejected']}")


@app.command()
def export(
    model_dir: Path = typer.Argument(..., help="A folder written by `hafrm train`."),
    out: Path = typer.Argument(..., help="The folder to write."),
    to: str = typer.Option(
        "seq-cls", "--to", help="seq-cls (AutoModelForSequenceClassification, head `score`) or causal-lm (the policy)."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT if it exists."),
    trust_remote_code: TrustOption = False,
) -> None:
    """Export a model to the standard folders TRL, OpenRLHF, RewardBench and vLLM load, no hafrm needed."""
    try:
        result = export_model(model_dir, to, out, overwrite=overwrite, trust_remote_code=trust_remote_code)
    except HafError as e:
        fail(str(e))
    if result.target == "seq-cls":
        if result.pad_token_added:
            console.print(
                f"added the pad token {result.pad_token!r}: the original pad token can end a formatted text",
                highlight=False,
            )
        if result.score_offset:
            console.print(
                f"the reward head has a bias of {result.score_offset:.6g}, which a `score` layer cannot hold: "
                "hafrm's score = the export's + that (stored as hafrm_export.score_offset)",
                highlight=False,
            )
        console.print(f"scores match hafrm's on probe texts to {result.max_abs_diff:.1e}", highlight=False)
    console.print(f"wrote {result.target} model to {result.out}", highlight=False)


@app.command()
def serve(
    model_dir: Path = typer.Argument(..., help="A folder written by `hafrm train`."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on (loopback by default)."),
    port: int = typer.Option(5000, help="Port to listen on."),
    api_key: str | None = typer.Option(
        None, envvar="HAFRM_API_KEY", help="Require `Authorization: Bearer KEY` (or set HAFRM_API_KEY)."
    ),
    head: str | None = typer.Option(None, help="reward or implicit (default: the model's own)."),
    normalize: bool = typer.Option(False, "--normalize", help="Serve (score - mean) / std (the folder's stats)."),
    max_texts: int = typer.Option(256, help="Texts per request, at most (413 beyond)."),
    max_chars: int = typer.Option(32768, help="Characters per text, at most (413 beyond)."),
    max_batch_tokens: int | None = typer.Option(
        None, help="Tokens per forward, shared by requests arriving together (default 1024 on CPU, 16384 on GPU)."
    ),
    device: str = typer.Option("auto", help="cpu, cuda, cuda:N, or auto (cuda if there is one)."),
    precision: str = typer.Option("fp32", help="fp32 (the numbers of `hafrm score`), bf16 (autocast), or auto."),
    max_wait_ms: float = typer.Option(5.0, help="How long a request waits for others to batch with."),
    max_queue: int = typer.Option(4096, help="Texts waiting, at most (503 beyond)."),
    timeout: float = typer.Option(120.0, help="Seconds per request, queue included (504 beyond)."),
    batching: bool = typer.Option(True, "--batching/--no-batching", help="Off: one request per forward."),
    trust_remote_code: TrustOption = False,
) -> None:
    """Serve a reward model over HTTP: OpenRLHF's /get_reward, /score, /health, OpenAPI at /docs."""
    try:
        import uvicorn

        limits = [max_texts, max_chars, max_queue] + ([max_batch_tokens] if max_batch_tokens is not None else [])
        if min(limits) < 1 or timeout <= 0 or max_wait_ms < 0:
            raise HafError("the --max-* limits must be >= 1, --timeout > 0 and --max-wait-ms >= 0")
        if max_texts > max_queue:
            raise HafError(f"--max-texts {max_texts} > --max-queue {max_queue}: a full request could never be queued")
        settings = ServerSettings(
            head=head, normalize=normalize, api_key=api_key or None, max_texts=max_texts, max_chars=max_chars,
            max_batch_tokens=max_batch_tokens, max_wait_ms=max_wait_ms, max_queue_texts=max_queue,
            timeout_s=timeout, batching=batching, precision=precision,
        )  # fmt: skip
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            torch.zeros(1, device=device)
        except (RuntimeError, AssertionError) as e:
            raise HafError(f"--device {device}: {str(e).splitlines()[0] if str(e) else 'not usable here'}") from None
        rm = RewardModel.from_pretrained(model_dir, trust_remote_code=trust_remote_code).to(device)
        server_app = create_app(rm, settings)
    except HafError as e:
        fail(str(e))
    if host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        console.print(f"[yellow]warning:[/] listening on {host} with no --api-key: anyone who reaches it can use it")
    service = server_app.state.service
    console.print(f"serving {model_dir} ({service.head} head, {service.precision}, {service.device}) on "
                  f"http://{host}:{port}; OpenRLHF: --reward.remote_url http://{host}:{port}/get_reward",
                  highlight=False)  # fmt: skip
    uvicorn.run(server_app, host=host, port=port, log_level="warning")


@app.command()
def bench(
    out: Path = typer.Option(Path("bench.json"), help="Where the JSON report goes."),
    model: str = typer.Option("smollm2", help="Model for every contender."),
    data: str | None = typer.Option(
        None, help="Pairs (any --data source); default: ../shared HH helpful, else builtin."
    ),
    pairs: int = typer.Option(64, help="Pairs read (the first that fit --max-length)."),
    batch_size: int = typer.Option(8, help="Pairs per optimizer step, for every contender."),
    steps: int = typer.Option(4, help="Timed optimizer steps per training contender (after one warm-up)."),
    max_length: int = typer.Option(512, help="Pairs longer than this are left out (no contender truncates)."),
    packing: bool = typer.Option(
        True, "--packing/--no-packing", help="hafrm contenders pack their batches (hafrm_hybrid_shared needs it)."
    ),
    contender: list[str] | None = typer.Option(
        None, help=f"Run only these (repeatable): {', '.join(CONTENDERS)}; default: all."
    ),
) -> None:
    """Throughput and memory of hafrm against TRL's RewardTrainer and DPOTrainer, and scoring."""
    unknown = sorted(set(contender or []) - set(CONTENDERS))
    if unknown:
        fail(f"unknown contender(s) {unknown}; accepted: {', '.join(CONTENDERS)}")
    spec = BenchSpec(
        model=model, data=data, pairs=pairs, batch_size=batch_size, steps=steps, max_length=max_length, packing=packing
    )
    if contender:
        spec.contenders = list(contender)
    try:
        report = run_bench(spec, log=lambda m: console.print(m, highlight=False))
    except HafError as e:
        fail(str(e))
    write_text_atomic(out, json.dumps(report, indent=2) + "\n")
    for key, value in report.items():
        if key.startswith(("ratio/", "mfu/", "fraction_", "max_")):
            shown = "n/a" if value is None else f"{value:.2e}" if key.startswith("max_") else f"{value:.3f}"
            console.print(f"{key}: {shown}", highlight=False)
    console.print(f"wrote {out} ({report['seconds']:.0f} s)", highlight=False)


@app.command()
def experiment(
    config: Path = typer.Option(..., "--config", help="Experiment YAML (see experiments/quick.yaml)."),
    output_dir: Path = typer.Option(..., help="Where cells, results.json and report.html go; a rerun continues."),
    report_only: bool = typer.Option(False, "--report-only", help="Only rewrite results and report from the cells."),
) -> None:
    """Methods x datasets x seeds under one budget: accuracy in and out of distribution, mixed data,
    checkpoint selection, calibration, the alpha sweep; writes results.json and report.html."""
    try:
        spec = load_experiment(config)
        if report_only:
            results = write_results(spec, output_dir)
            stale = results["cells_left_out_stale"]
            left_out = f"; {len(stale)} left out, their config or data changed: {', '.join(stale)}" if stale else ""
            console.print(f"{results['cells_finished']} cells in the report{left_out}", highlight=False, soft_wrap=True)
            console.print(f"wrote {output_dir / 'report.html'}", highlight=False)
            return
        run, _ = run_and_report(spec, output_dir, log_line=lambda m: console.print(m, highlight=False))
    except HafError as e:
        fail(str(e))
    console.print(
        f"{len(run.done)} cells run, {len(run.reused)} reused, {len(run.failed)} failed; "
        f"wrote {output_dir / 'results.json'} and {output_dir / 'report.html'}",
        highlight=False,
    )
    if run.failed:
        for cell, why in run.failed.items():
            console.print(f"  {cell}: {why}", highlight=False)
        raise typer.Exit(1)


@app.command()
def bon(
    model_dir: list[str] = typer.Argument(..., help="Reward model folders to compare; NAME=DIR names one."),
    output_dir: Path = typer.Option(..., help="Where candidates.jsonl (reused by a rerun) and bon.json go."),
    prompts: str = typer.Option("builtin", help="'builtin[:SKILL,...]' (gold verifiers) or any --data source."),
    num_prompts: int = typer.Option(32, help="Held-out prompts (the eval side of the training split)."),
    n: int = typer.Option(8, help="Candidates sampled per prompt."),
    policy: str = typer.Option("smollm2", help="Policy model that samples the candidates."),
    temperatures: str = typer.Option("0.5,0.8,1.1,1.4", help="Sampling temperatures, spread over the N."),
    max_new_tokens: int = typer.Option(48, help="Tokens per candidate."),
    seed: int = typer.Option(0, help="Sampling seed."),
    split_seed: int = typer.Option(42, help="The models' training --seed: prompts come from its held-out side."),
    eval_fraction: float = typer.Option(0.2, help="The models' training --eval-fraction (held-out share)."),
    judge: Path | None = typer.Option(None, help="A judge reward model folder (top-k recall, win rates)."),
    judge_url: str | None = typer.Option(None, help="OpenAI-compatible base URL (…/v1) of a pairwise chat judge."),
    judge_model: str = typer.Option("gpt-4o-mini", help="Model name sent to --judge-url."),
) -> None:
    """Best-of-N: each reward model picks one of N sampled responses per prompt; the picks are judged."""
    try:
        named = named_paths(model_dir, "model folder", lambda p: Path(p).name)
        dirs = {name: Path(path) for name, path in named.items()}
        for path in dirs.values():
            if not path.is_dir():
                raise HafError(f"model folder {path} does not exist")
        temps = [float(t) for t in temperatures.split(",") if t.strip()]
        if n < 1 or num_prompts < 1 or not temps or min(temps) <= 0:
            raise HafError("n and num_prompts must be >= 1 and temperatures positive")
        spec = BonSpec(
            prompts=prompts, num_prompts=num_prompts, n=n, policy=policy, temperatures=temps,
            max_new_tokens=max_new_tokens, seed=seed, eval_fraction=eval_fraction, split_seed=split_seed,
        )  # fmt: skip
        chat = ChatJudge(judge_url, judge_model, os.environ.get("HAFRM_JUDGE_API_KEY")) if judge_url else None
        report = run_bon(spec, dirs, output_dir, judge, chat, log_line=lambda m: console.print(m, highlight=False))
    except (HafError, ValueError) as e:
        fail(str(e))
    table = Table(title=f"Best-of-{n} on {report['prompts']} prompts")
    columns = sorted({k for m in report["methods"].values() for k in m if k != "top_k_recall"})
    recalls = sorted({k for m in report["methods"].values() for k in m.get("top_k_recall", {})}, key=int)
    for col in ["method", *columns, *[f"top-{k} recall" for k in recalls]]:
        table.add_column(col)
    for name, m in report["methods"].items():
        table.add_row(name, *[f"{m[c]:.3f}" for c in columns], *[f"{m['top_k_recall'][k]:.3f}" for k in recalls])
    Console().print(table)
    if "gold" in report:
        g = report["gold"]
        console.print(f"candidates correct {g['candidates_correct']:.3f}; oracle (any correct) {g['oracle']:.3f}")
    console.print(f"wrote {output_dir / 'bon.json'}", highlight=False)


app.command("rlhf")(_rlhf)
app.command("generate")(generate)


@app.command("prepare-model")
def prepare_model(cache_dir: str | None = typer.Option(None, help=H("cache_dir"))) -> None:
    """Convert the embedded SmolLM2 (GGUF on PyPI) into a cached safetensors folder."""
    try:
        console.print(f"embedded model ready at {prepare_embedded(cache_dir)}")
    except HafError as e:
        fail(str(e))


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    app()


if __name__ == "__main__":
    main()
