"""Run an experiment's cells (method x training data x seed), keeping every finished cell.

Layout of the output folder:

    data/<dataset>.train.jsonl, .test.jsonl   the split, written once (normalised records)
    data/datasets.json                        what was read, kept, dropped and split, per dataset
    cells/<cell>/cell.json                    a finished cell: config, budget, every head's scores
    results.json, report.html, *.png          the analysis of the finished cells

A rerun of the same command skips every cell whose `cell.json` matches its config and data, and
runs the rest; a cell that fails is written to `cells/<cell>/error.txt` and the others go on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import shutil
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch

from hafrm.config import MODES, HafConfig
from hafrm.data.formats import DataOptions
from hafrm.data.inspect import pair_record
from hafrm.data.io import cap, load_pairs, split_by_prompt
from hafrm.data.sources import read_sources
from hafrm.data.types import PreferencePair
from hafrm.errors import DataError, HafError
from hafrm.evaluation.bon import BonSpec, load_or_generate
from hafrm.evaluation.evaluate import EvalResult
from hafrm.evaluation.scoring import load as load_reward_model
from hafrm.experiments.spec import MIXED, NOT_SHARED, Cell, DatasetSpec, ExperimentSpec, cell_config, plan_cells
from hafrm.fileio import write_jsonl_atomic, write_text_atomic
from hafrm.heads import SCORE_KEYS
from hafrm.training.precision import resolve_precision
from hafrm.training.recipe import train

log = logging.getLogger(__name__)
# Bump when a cell's training or evaluation computes differently for the same config and data,
# so that finished cells made by older code are not reused (2: bf16 training references).
CELL_VERSION = "2"
# HafConfig fields left out of a cell's fingerprint: the paths under the output folder (their
# bytes are hashed instead), and speed only (the cached path equals the full forward, checked each run).
UNHASHED_PATHS = ("output_dir", "data", "eval_data")
SPEED_ONLY = ("prefix_cache_mib", "save_only_model")  # (and what a cell's checkpoints hold: it keeps none)


# data -----------------------------------------------------------------------------------------
def _read_dataset(ds: DatasetSpec, spec: ExperimentSpec) -> tuple[list[PreferencePair], list[dict[str, Any]]]:
    cfg = HafConfig.from_dict(
        {**ds.options, "max_pairs_per_source": ds.max_pairs, "seed": spec.split_seed},
        source=f"{spec.source}: dataset {ds.name!r}",
    )
    sources = read_sources(ds.data, cfg, n=ds.max_pairs, require_pairs=False)  # n: the built-in task's size
    pairs = [p for s in sources for p in s.pairs]
    reports = [{"source": s.item, "kept": len(s.pairs)} if s.report is None else s.report.to_dict() for s in sources]
    if not pairs:
        raise DataError(f"{spec.source}: dataset {ds.name!r} has no pairs")
    return pairs, reports


def _record(pair: PreferencePair, dataset: str) -> dict[str, Any]:
    """The normalised record, with the dataset as its source (metrics are per source); a
    built-in pair keeps its subset ("arithmetic.add"), other pairs with a skill get it as theirs."""
    meta = dict(pair.meta)
    if "skill" in meta:
        meta.setdefault("subset", meta.pop("skill"))
    return pair_record(dataclasses.replace(pair, source=dataset, meta=meta))


def prepare_data(spec: ExperimentSpec, out: Path) -> dict[str, dict[str, Any]]:
    """Split every dataset by prompt and write the splits; returns the per-dataset summary."""
    data_dir = out / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    summary = {}
    for name, ds in spec.datasets.items():
        pairs, reports = _read_dataset(ds, spec)
        if ds.test_only:  # never trained on: every pair is held out
            train, test = [], list(pairs)
        else:
            train, test = split_by_prompt(pairs, spec.test_fraction, spec.split_seed)
        split = {"train": len(train), "test": len(test)}
        if spec.max_train_pairs and len(train) > spec.max_train_pairs:
            train = cap(train, spec.max_train_pairs, spec.split_seed)
        if spec.max_test_pairs and len(test) > spec.max_test_pairs:
            test = cap(test, spec.max_test_pairs, spec.split_seed)
        if not test or not (train or ds.test_only):
            raise DataError(f"{spec.source}: dataset {name!r}: {len(pairs)} pairs are too few to split")
        write_jsonl_atomic(data_dir / f"{name}.train.jsonl", [_record(p, name) for p in train])
        write_jsonl_atomic(data_dir / f"{name}.test.jsonl", [_record(p, name) for p in test])
        mixed = train
        if spec.mixed_max_pairs_per_source and len(train) > spec.mixed_max_pairs_per_source:
            mixed = cap(train, spec.mixed_max_pairs_per_source, spec.split_seed)
        write_jsonl_atomic(data_dir / f"{name}.mixed.jsonl", [_record(p, name) for p in mixed])
        summary[name] = {
            "group": ds.group,
            "sources": reports,
            "pairs_read": len(pairs),
            "split": split,
            "train_pairs": len(train),
            "test_pairs": len(test),
            "mixed_train_pairs": len(mixed),
        }
    write_text_atomic(data_dir / "datasets.json", json.dumps(summary, indent=2) + "\n")
    return summary


def _file_hash(paths: list[Path]) -> str:
    h = hashlib.blake2b(digest_size=12)
    for p in paths:
        h.update(p.read_bytes())
    return h.hexdigest()


# cells ----------------------------------------------------------------------------------------
def _sets(spec: ExperimentSpec, cell: Cell, name: str) -> bool:
    """Whether the experiment file sets this HafConfig field for the cell (in `train:` or its method)."""
    return name in spec.train or name in spec.methods.get(cell.base_method, {}) or name in cell.overrides


@dataclass(frozen=True, kw_only=True)
class CellSetup:
    config: HafConfig  # what the cell trains with
    other_tests: list[str]  # the test splits of the datasets it does not train on
    fingerprint: str  # of its config, the code version and the data: a finished cell with it is reused


def cell_setup(spec: ExperimentSpec, cell: Cell, out: Path) -> CellSetup:
    data_dir = out / "data"
    names = spec.train_sets if cell.train == MIXED else [cell.train]
    train_files = [data_dir / f"{n}.{'mixed' if cell.train == MIXED else 'train'}.jsonl" for n in names]
    own_tests = [data_dir / f"{n}.test.jsonl" for n in names]
    n_train = sum(sum(1 for _ in f.open()) for f in train_files)
    cfg0 = cell_config(spec, cell)
    per_step = cfg0.per_device_train_batch_size * cfg0.gradient_accumulation_steps
    steps = cfg0.max_steps if cfg0.max_steps > 0 else max(1, int(math.ceil(n_train / per_step) * cfg0.num_train_epochs))
    cfg = cell_config(
        spec,
        cell,
        data=[str(f) for f in train_files],
        eval_data=[str(f) for f in own_tests],
        output_dir=str(out / "cells" / cell.id / "model"),
        select_by="step",  # identical budgets: every cell ends at its last step
        eval_steps=max(1, math.ceil(steps / spec.evals_per_run)),
        save_steps=10**9,  # no intermediate checkpoints: a cell is the unit that resumes
        logging_steps=cfg0.logging_steps if _sets(spec, cell, "logging_steps") else max(1, steps // 20),  # a curve
    )
    other_tests = [str(data_dir / f"{n}.test.jsonl") for n in spec.datasets if n not in names]
    config = cfg.to_dict()
    for key in (*UNHASHED_PATHS, *SPEED_ONLY):
        config.pop(key)
    if not cfg.shares_prefixes:  # cells finished before the option existed did not share prompts
        config.pop("prefix_sharing")
    if not cfg.lora_r:  # cells finished before LoRA existed had none
        for key in HafConfig.fields_in("lora"):
            config.pop(key)
    for key, off in (("trust_remote_code", False), ("report_to", "none"), ("gradient_checkpointing", False)):
        if config[key] == off:  # cells finished before these options existed ran without them
            config.pop(key)
    if config["group_by_length"]:  # cells finished before the option existed were length-grouped
        config.pop("group_by_length")
    for key in NOT_SHARED:  # read options of the split files, whose bytes are hashed
        config.pop(key)
    config["cache_dir"] = None  # where the caches live is speed only (hashed as unset: finished cells stay valid)
    config["precision"] = resolve_precision(cfg.precision, "cuda" if torch.cuda.is_available() else "cpu")
    tests = [data_dir / f"{n}.test.jsonl" for n in spec.datasets]
    # a cell never sees the judge, and top_k only changes the analysis
    bon_fields = {k: v for k, v in spec.bon.items() if k not in ("judge", "top_k")} if spec.bon else spec.bon
    seen = (
        json.dumps(config, sort_keys=True)
        + CELL_VERSION
        + _file_hash(train_files + tests)
        + json.dumps([spec.external, bon_fields, spec.keep_models, cell.train], sort_keys=True)
        + _file_hash([Path(p) for p in spec.external.values() if Path(p).is_file()])
    )
    fingerprint = hashlib.blake2b(seen.encode(), digest_size=12).hexdigest()
    return CellSetup(config=cfg, other_tests=other_tests, fingerprint=fingerprint)


def _scores(result: EvalResult, dataset_of: Callable[[int], str]) -> dict[str, dict[str, Any]]:
    """Per dataset: every head's chosen/rejected scores and each pair's subset."""
    out: dict[str, dict[str, Any]] = {}
    for i in range(len(result.tags)):
        d = out.setdefault(dataset_of(i), {"subsets": [], "halves": []})
        d["subsets"].append(result.subsets[i] if result.subsets else "")
        d["halves"].append(int(result.groups[i][-1], 16) % 2 if result.groups else i % 2)  # by split group
        for c, r in SCORE_KEYS.values():
            values = getattr(result, c), getattr(result, r)
            if values[0] is not None:
                d.setdefault(c, []).append(round(float(values[0][i]), 6))
                d.setdefault(r, []).append(round(float(values[1][i]), 6))
    return out


def bon_candidates(spec: ExperimentSpec, out: Path, log_line: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """The Best-of-N candidates every cell scores (sampled once, kept in `out/bon/`)."""
    if not spec.bon:
        return []
    # prompts from the held-out side of the experiment's own split: never a training prompt
    fields = {k: v for k, v in spec.bon.items() if k != "judge"}
    bon = BonSpec(**{"split_seed": spec.split_seed, "eval_fraction": spec.test_fraction, **fields})
    candidates = load_or_generate(bon, out / "bon", log_line)
    if spec.bon.get("judge"):
        scores = judge_scores(Path(spec.bon["judge"]), candidates, out / "bon", log_line)
        candidates = [c | {"judge": s} for c, s in zip(candidates, scores, strict=True)]
    return candidates


def _judge_key(judge: Path, candidates: list[dict[str, Any]]) -> str:
    """What the judge's scores depend on: the candidates, and every file of the judge's folder
    (weights, reward head, hafrm config, tokenizer) by name, size and modification time."""
    key = hashlib.blake2b(digest_size=12)
    key.update(json.dumps([[c["prompt"], c["response"]] for c in candidates]).encode())
    for f in sorted(p for p in judge.rglob("*") if p.is_file()):
        st = f.stat()
        key.update(f"{f.relative_to(judge)}:{st.st_size}:{st.st_mtime_ns}".encode())
    return key.hexdigest()


def judge_scores(judge: Path, candidates: list[dict[str, Any]], out: Path, log_line=print) -> list[float]:
    """The judge model's score of every candidate, kept in `out/judge.json` (rescored when the
    candidates or the judge's folder change)."""
    key = _judge_key(judge, candidates)
    path = out / "judge.json"
    if path.is_file() and json.loads(path.read_text()).get("key") == key:
        return json.loads(path.read_text())["scores"]
    scores = load_reward_model(judge).score_batch(
        [c["prompt"] for c in candidates], [c["response"] for c in candidates]
    )
    write_text_atomic(path, json.dumps({"judge": str(judge), "key": key, "scores": scores}) + "\n")
    log_line(f"judge {judge} scored {len(candidates)} candidates")
    return scores


def load_candidates(spec: ExperimentSpec, out: Path) -> list[dict[str, Any]]:
    """The Best-of-N candidates of a run folder, with the judge's scores when they were made by
    the spec's judge for these candidates (else without, and a warning)."""
    path = out / "bon" / "candidates.jsonl"
    if not spec.bon or not path.is_file():
        return []
    candidates = [json.loads(line) for line in path.read_text().splitlines()]
    judge = spec.bon.get("judge")
    if judge:
        saved = out / "bon" / "judge.json"
        record = json.loads(saved.read_text()) if saved.is_file() else {}
        if record.get("key") == _judge_key(Path(judge), candidates):
            candidates = [c | {"judge": s} for c, s in zip(candidates, record["scores"], strict=True)]
        else:
            log.warning("%s: no judge scores of these candidates by %s (run the experiment to make them)", saved, judge)
    return candidates


def run_cell(
    spec: ExperimentSpec,
    cell: Cell,
    out: Path,
    cfg: HafConfig,
    other_tests: list[str],
    candidates: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Train one cell; evaluate its final model on every test split and external set, in process."""
    start = time.time()
    extra = {Path(p).name: load_pairs(p, DataOptions(format="trl")) for p in other_tests}
    extra |= {f"external/{n}": load_pairs(p, DataOptions(on_error="skip")) for n, p in spec.external.items()}
    result = train(cfg, extra_eval=extra, save=spec.keep_models)
    if not spec.keep_models:  # the Trainer's checkpoint of the last step (about 0.8 GB for SmolLM2)
        for checkpoint in Path(cfg.output_dir).glob("checkpoint-*"):
            shutil.rmtree(checkpoint)
    scores = _scores(result.eval_result, lambda i: result.eval_result.tags[i])
    for name, ev in result.extra_eval.items():
        if name.startswith("external/"):
            scores[name] = _scores(ev, lambda i: "all")["all"]
        else:
            scores |= _scores(ev, lambda i, ev=ev: ev.tags[i])
    history = [
        {"step": step, "scores": _scores(ev, lambda i, ev=ev: ev.tags[i])}
        for step, ev in sorted(result.history.items())
    ]
    bon = {}
    if candidates:  # each head of the trained model scores every Best-of-N candidate
        prompts, responses = [c["prompt"] for c in candidates], [c["response"] for c in candidates]
        for head in [MODES[cfg.mode].inference_head] + (["implicit"] if cfg.mode == "hybrid" else []):
            bon[head] = [round(x, 6) for x in result.reward_model.score_batch(prompts, responses, head=head)]
    train_logs = [
        {k: v for k, v in row.items() if k in ("step", "loss", "loss/bt", "loss/policy", "rewards/accuracies")}
        for row in result.log_history
        if "loss" in row and "train_runtime" not in row
    ]
    return {
        "cell": dataclasses.asdict(cell) | {"id": cell.id},
        "mode": cfg.mode,
        "inference_head": MODES[cfg.mode].inference_head,
        "alpha": cfg.alpha,
        "alpha_schedule": cfg.alpha_schedule,
        "train_pairs": result.train_pairs,
        "steps": int(result.metrics["train/steps"]),
        "seconds": time.time() - start,
        "train_seconds": result.seconds,
        "precision": result.precision,
        "dropped": result.dropped,
        "scores": scores,
        "history": history,
        "train_logs": train_logs,
        "bon": bon,
    }


@dataclass(kw_only=True)
class RunSummary:
    done: list[str] = field(default_factory=list)  # ran now
    reused: list[str] = field(default_factory=list)  # finished before, same config and data
    failed: dict[str, str] = field(default_factory=dict)  # cell id -> error line


def run_experiment(spec: ExperimentSpec, out: Path, log_line: Callable[[str], None] = print) -> RunSummary:
    """Run every unfinished cell; finished ones (same config and data) are kept."""
    out.mkdir(parents=True, exist_ok=True)
    summary = prepare_data(spec, out)
    for name, s in summary.items():
        log_line(f"data {name}: {s['pairs_read']} pairs read, {s['train_pairs']} train / {s['test_pairs']} test")
    cells = plan_cells(spec)
    candidates = bon_candidates(spec, out, log_line)
    run = RunSummary()
    seconds: list[float] = []  # of the cells run now, for the time left
    for n, cell in enumerate(cells, 1):
        try:
            setup = cell_setup(spec, cell, out)
        except HafError as e:
            run.failed[cell.id] = str(e).splitlines()[0]
            log_line(f"  {cell.id} cannot start: {run.failed[cell.id]}")
            continue
        cell_dir = out / "cells" / cell.id
        done = cell_dir / "cell.json"
        if done.is_file() and json.loads(done.read_text()).get("fingerprint") == setup.fingerprint:
            run.reused.append(cell.id)
            continue
        shutil.rmtree(cell_dir, ignore_errors=True)
        cell_dir.mkdir(parents=True)
        log_line(f"[{n}/{len(cells)}] {cell.id}")
        try:
            record = run_cell(spec, cell, out, setup.config, setup.other_tests, candidates)
        except (HafError, RuntimeError, ValueError, OSError) as e:
            (cell_dir / "error.txt").write_text(traceback.format_exc())
            run.failed[cell.id] = f"{type(e).__name__}: {e}".splitlines()[0]
            log_line(f"  failed: {run.failed[cell.id]}")
            continue
        record["fingerprint"] = setup.fingerprint
        record["config"] = setup.config.to_dict()
        write_text_atomic(done, json.dumps(record) + "\n")  # a killed run never leaves a half-written cell
        run.done.append(cell.id)
        seconds.append(record["seconds"])
        left = len(cells) - n  # an upper bound: some of them may be finished already
        per = sum(seconds) / len(seconds)
        eta = f"; at {per / 60:.1f} min a cell, at most {left * per / 3600:.1f} h for the {left} left" if left else ""
        log_line(f"  {record['train_pairs']} pairs, {record['steps']} steps, {record['seconds']:.0f} s{eta}")
    return run


class FinishedCells(NamedTuple):
    cells: list[dict[str, Any]]  # the cell.json records that count
    stale: list[str]  # ids of those left out: their config or data changed


def load_cells(out: Path, spec: ExperimentSpec | None = None) -> FinishedCells:
    """The finished cells of an experiment folder, and the ids of those left out: with `spec`,
    only cells of its plan whose config and data are unchanged count (stale ones are listed)."""
    cells = [json.loads(p.read_text()) for p in sorted((out / "cells").glob("*/cell.json"))]
    if spec is None:
        return FinishedCells(cells=cells, stale=[])
    current = {}
    for cell in plan_cells(spec):
        try:
            current[cell.id] = cell_setup(spec, cell, out).fingerprint
        except (HafError, OSError):
            continue
    keep = [c for c in cells if current.get(c["cell"]["id"]) == c.get("fingerprint")]
    return FinishedCells(cells=keep, stale=sorted(c["cell"]["id"] for c in cells if c not in keep))
