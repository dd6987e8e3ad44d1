"""`hafrm data inspect` and `hafrm data convert`: look at preference data, and normalise it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table
from transformers import AutoTokenizer

from hafrm.apps.config_options import (
    FormatOption,
    MapOption,
    OnErrorOption,
    PkuFilterOption,
    PkuLabelOption,
    data_options,
)
from hafrm.apps.console import console, fail
from hafrm.config import field_help
from hafrm.data.inspect import convert_source, inspect_source
from hafrm.data.io import summary_line
from hafrm.errors import HafError
from hafrm.fileio import write_text_atomic
from hafrm.modeling.backbone import resolve_model

H = field_help
data_app = typer.Typer(no_args_is_help=True, help="Look at preference data and convert it.")


@data_app.command("inspect")
def data_inspect(
    paths: list[str] = typer.Argument(..., help="Files (.jsonl/.json/.parquet/.csv[.gz]) or Hub dataset ids."),
    data_format: FormatOption = None,
    data_map: MapOption = None,
    pku_label: PkuLabelOption = "safer",
    pku_safety_filter: PkuFilterOption = False,
    model: str | None = typer.Option("smollm2", help="Tokenizer for the token-length figures ('' to skip)."),
    max_length: int = typer.Option(512, help=H("max_length")),
    max_prompt_length: int = typer.Option(256, help=H("max_prompt_length")),
    json_out: Path | None = typer.Option(None, "--json", help="Also write the figures as JSON here."),
) -> None:
    """Detected format, pairs kept, ties and drops with reasons, prompts, duplicates, token lengths."""
    try:
        opts = data_options(data_format, data_map, pku_label, pku_safety_filter)
        tokenizer = None
        if model:
            tokenizer = AutoTokenizer.from_pretrained(resolve_model(model))
        infos = [inspect_source(p, opts, tokenizer, max_length, max_prompt_length) for p in paths]
    except HafError as e:
        fail(str(e))
    for info in infos:
        print_inspect(info)
    if json_out:
        write_text_atomic(json_out, json.dumps(infos, indent=2) + "\n")


@data_app.command("convert")
def data_convert(
    path: str = typer.Argument(..., help="A file or Hub dataset id in any format `data inspect` reads."),
    out: Path = typer.Option(..., "--out", help="Normalised JSONL (prompt as messages, chosen, rejected)."),
    data_format: FormatOption = None,
    data_map: MapOption = None,
    on_error: OnErrorOption = "raise",
    pku_label: PkuLabelOption = "safer",
    pku_safety_filter: PkuFilterOption = False,
) -> None:
    """Write a source's pairs in hafrm's normalised JSONL, which `--data` reads back unchanged."""
    try:
        report = convert_source(path, data_options(data_format, data_map, pku_label, pku_safety_filter, on_error), out)
    except HafError as e:
        fail(str(e))
    console.print(summary_line(report), highlight=False)
    console.print(f"wrote {report.kept} pairs to {out}", highlight=False)


def print_inspect(info: dict[str, Any]) -> None:
    """One source's figures as a two-column table, to stdout."""
    table = Table(title=f"{info['path']}", show_header=False)
    table.add_column("what")
    table.add_column("value", overflow="fold")
    table.add_row("format", info["format"])
    table.add_row("records read", str(info["records"]))
    table.add_row("pairs (before bad-record skips)", str(info["pairs"]))
    table.add_row("pairs kept", f"[bold]{info['kept']}[/]")
    for reason, n in sorted(info["dropped"].items()):
        table.add_row("dropped", f"{n}  {reason}")
    for kind, n in sorted(info["skipped"].items()):
        table.add_row("bad records", f"{n}  {kind}  (first: {info['first_error'][kind]})")
    for note, n in sorted(info["notes"].items()):
        table.add_row("note", f"{n}  {note}")
    table.add_row("distinct prompts", str(info["prompts"]))
    table.add_row("multi-turn prompts", str(info["multi_turn_prompts"]))
    table.add_row("duplicate pairs", str(info["duplicate_pairs"]))
    if info["subsets"]:
        largest = sorted(info["subsets"].items(), key=lambda kv: (-kv[1], kv[0]))
        shown = ", ".join(f"{k} {v}" for k, v in largest[:6]) + (" …" if len(largest) > 6 else "")
        table.add_row("subsets", f"{len(largest)}: {shown}")
    for name, pct in info.get("tokens", {}).items():
        table.add_row(f"tokens: {name}", "  ".join(f"{k} {v}" for k, v in pct.items()))
    if "tokenisation" in info:
        t = info["tokenisation"]
        cut = ", ".join(f"{n} {what}" for what, n in sorted(t["truncated"].items())) or "none"
        drop = ", ".join(f"{n} {why}" for why, n in sorted(t["dropped"].items())) or "none"
        table.add_row(f"at max_length {t['max_length']}", f"{t['kept']} kept; truncated: {cut}; dropped: {drop}")
    Console().print(table)
