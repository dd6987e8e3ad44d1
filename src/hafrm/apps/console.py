"""What the CLI prints: the error line of a user error (exit 2) and the accuracy table."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from hafrm.heads import HEADS

console = Console(stderr=True)


def fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def print_eval_table(metrics: dict[str, float], title: str) -> None:
    """Accuracy per head (columns) overall, per tag and then per subset (rows), to stdout."""
    heads = [h for h in HEADS.values() if f"{h}/accuracy" in metrics]
    table = Table(title=title, caption="pairwise accuracy; ties count 0.5")
    table.add_column("subset")
    for h in heads:
        table.add_column(h, justify="right")
    for kind in ("tag", "subset", "rewardbench"):
        names = sorted({k.split("/")[1] for k in metrics if k.startswith(f"{kind}/")})
        for name in names:
            cells = [f"{metrics.get(f'{kind}/{name}/{h}/accuracy', float('nan')):.3f}" for h in heads]
            label = {"tag": name, "subset": f"  {name}", "rewardbench": f"RewardBench {name}"}[kind]
            table.add_row(label, *cells)
        if names:
            table.add_section()
    table.add_row("[bold]all[/]", *[f"[bold]{metrics[f'{h}/accuracy']:.3f}[/]" for h in heads])
    Console().print(table)
