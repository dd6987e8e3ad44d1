"""`hafrm experiment`: the paper's comparisons (Baseline vs DPO vs HaF, in and out of
distribution, mixed data, checkpoint selection, calibration, alpha) as one resumable command."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from hafrm.experiments.analysis import analyse
from hafrm.experiments.runner import RunSummary, load_candidates, load_cells, prepare_data, run_experiment
from hafrm.experiments.spec import ExperimentSpec, load_experiment, parse_experiment, plan_cells
from hafrm.fileio import write_text_atomic

__all__ = [
    "ExperimentSpec",
    "load_experiment",
    "parse_experiment",
    "plan_cells",
    "run_and_report",
    "write_results",
]


def write_results(spec: ExperimentSpec, out: Path, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Analyse the finished cells of `out`; write results.json, the PNGs and report.html."""
    from hafrm.experiments.report import write_report  # lazy: it imports matplotlib

    if not (out / "data" / "datasets.json").is_file():  # cells copied into a new folder: a cell's
        prepare_data(spec, out)  # fingerprint hashes the split files, the same every time they are written
    cells, stale = load_cells(out, spec)
    candidates = load_candidates(spec, out)
    results = analyse(cells, spec, candidates) | {"cells_left_out_stale": stale} | (extra or {})
    write_text_atomic(out / "results.json", json.dumps(results, indent=2) + "\n")
    write_report(results, cells, out)
    return results


class RunReport(NamedTuple):
    run: RunSummary  # the cells run now, reused and failed
    results: dict[str, Any]  # what results.json holds


def run_and_report(spec: ExperimentSpec, out: Path, log_line: Callable[[str], None] = print) -> RunReport:
    """Run every unfinished cell, then write the results and the report (also when cells failed)."""
    start = time.time()
    run = run_experiment(spec, out, log_line)
    planned = len(plan_cells(spec))
    extra = {
        "run": {
            "cells_planned": planned,
            "cells_run_now": len(run.done),
            "cells_reused": len(run.reused),
            "cells_failed": run.failed,
            "seconds_this_run": time.time() - start,
        }
    }
    return RunReport(run=run, results=write_results(spec, out, extra))
