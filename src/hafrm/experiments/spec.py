"""An experiment: methods x datasets x seeds under one budget, read from YAML.

```yaml
name: quick
seeds: [0, 1]
train: {max_steps: 12, freeze_layers: 20}      # HafConfig fields shared by every cell
methods: [reward, dpo, hybrid]                  # or {name: {HafConfig overrides}}
datasets:
  arithmetic: {data: "builtin:arithmetic", group: reasoning}
  helpful: {data: ../shared/data/hh-helpful-base-test.jsonl.gz, group: chat, on_error: skip}
max_train_pairs: 200                            # per dataset, after the split
mixed: true                                     # also train on every dataset together,
mixed_max_pairs_per_source: 100                 #   capped per dataset
alpha_sweep: {dataset: arithmetic, alphas: [0, 0.05, 0.1, 0.2, 0.5, 1], schedules: [decay]}
```
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hafrm.config import ALPHA_SCHEDULES, MODES, HafConfig, read_options
from hafrm.errors import ConfigError
from hafrm.evaluation.bon import BonSpec
from hafrm.objectives.haf import AUTO_ALPHA

# HafConfig fields a cell sets itself (the `cell` ones): every cell reads its split files and keeps its last step.
CELL_FIELDS = HafConfig.fields_in(cell=True)
# How each dataset is read (HafConfig's `source` fields): set on a dataset, never in train or a
# method; a dataset's `max_pairs` stands for max_pairs_per_source.
DATA_OPTIONS = tuple(name for name in HafConfig.fields_in(source=True) if name != "max_pairs_per_source")
# Nor, there, how much data is read and held out: a dataset's max_pairs and the test_fraction say that.
NOT_SHARED = (*HafConfig.fields_in(source=True), "builtin_pairs", "eval_fraction")
MIXED = "mixed"


@dataclass(kw_only=True)
class DatasetSpec:
    name: str
    data: list[str]  # sources, as `hafrm train --data`
    group: str = ""  # subject group for the OOD averages (e.g. chat, safety)
    options: dict[str, Any] = field(default_factory=dict)  # data_format, on_error, ...
    max_pairs: int | None = None  # cap on the pairs read, before the split (a seeded sample)
    test_only: bool = False  # never trained on: every pair is a test pair of every cell (out of distribution)


@dataclass(kw_only=True)
class AlphaSweep:
    dataset: str
    alphas: list[float | str]  # numbers, or "auto"
    seeds: list[int] | None = None  # default: the experiment's seeds
    schedules: list[str] = field(default_factory=list)  # alpha schedules tried against the constant one


@dataclass(kw_only=True)
class ExperimentSpec:
    name: str
    datasets: dict[str, DatasetSpec]
    methods: dict[str, dict[str, Any]]  # method name -> HafConfig overrides
    seeds: list[int] = field(default_factory=lambda: [0])
    train: dict[str, Any] = field(default_factory=dict)
    test_fraction: float = 0.2
    split_seed: int = 0
    max_train_pairs: int | None = None
    max_test_pairs: int | None = None
    mixed: bool = False
    mixed_max_pairs_per_source: int | None = None  # cap per dataset in the mixed cells (default: none)
    external: dict[str, str] = field(default_factory=dict)  # name -> RewardBench-format file
    alpha_sweep: AlphaSweep | None = None
    evals_per_run: int = 4
    bon: dict[str, Any] | None = None  # Best-of-N in every cell: hafrm.evaluation.bon.BonSpec fields (prompts, n, ...)
    # and optionally `judge`: a saved hafrm model whose scores rank the candidates
    keep_models: bool = False
    source: str = "experiment"

    @property
    def train_sets(self) -> list[str]:
        """The datasets cells train on (all but the `test_only` ones)."""
        return [n for n, d in self.datasets.items() if not d.test_only]

    def cell_config(self, method: str, seed: int, **cell: Any) -> HafConfig:
        """The HafConfig of one cell: shared `train` fields, the method's, then the cell's own."""
        values = {**self.train, **self.methods[method], "seed": seed, **cell}
        where = f"{self.source}: method {method!r}"
        try:
            return HafConfig.from_dict(values, source=where)
        except ConfigError as e:
            raise ConfigError(str(e) if str(e).startswith(where) else f"{where}: {e}") from None


@dataclass(kw_only=True)
class Cell:
    """One training run of an experiment."""

    method: str  # a key of spec.methods, or "hybrid@alpha=..." for the alpha sweep
    train: str  # a dataset name, or "mixed"
    seed: int
    overrides: dict[str, Any] = field(default_factory=dict)  # on top of the method's fields
    kind: str = "main"  # main | mixed | sweep
    base_method: str = ""  # the spec method whose fields it starts from

    @property
    def id(self) -> str:
        return f"{self.method}--{self.train}--s{self.seed}"


def plan_cells(spec: ExperimentSpec) -> list[Cell]:
    """Every cell of the experiment, in the order they run (seed-major: the first seed of every
    method and dataset comes first, so an interrupted run already holds a complete grid)."""
    cells = []
    for seed in spec.seeds:
        for ds in spec.train_sets:
            cells += [Cell(method=m, train=ds, seed=seed, base_method=m) for m in spec.methods]
        if spec.mixed and len(spec.train_sets) > 1:
            cells += [Cell(method=m, train=MIXED, seed=seed, kind="mixed", base_method=m) for m in spec.methods]
    sweep = spec.alpha_sweep
    if sweep is not None:
        base = "hybrid" if "hybrid" in spec.methods else None
        base_alpha = spec.cell_config(base, 0).alpha if base else None
        for seed in sweep.seeds or spec.seeds:
            for alpha in sweep.alphas:
                if base and alpha == base_alpha and seed in spec.seeds:
                    continue  # that cell is the main hybrid cell; the analysis reads it from there
                overrides = {"mode": "hybrid", "alpha": alpha}
                cells.append(_sweep_cell(f"hybrid@alpha={alpha_name(alpha)}", sweep, seed, overrides, base))
            for schedule in sweep.schedules:
                overrides = {"mode": "hybrid", "alpha_schedule": schedule}
                cells.append(_sweep_cell(f"hybrid@schedule={schedule}", sweep, seed, overrides, base))
    return cells


def alpha_name(alpha: float | str) -> str:
    """How an alpha is written in cell ids and tables: 0.2, 1, auto."""
    return alpha if isinstance(alpha, str) else f"{alpha:g}"


def _sweep_cell(name: str, sweep: AlphaSweep, seed: int, overrides: dict[str, Any], base: str | None) -> Cell:
    return Cell(method=name, train=sweep.dataset, seed=seed, overrides=overrides, kind="sweep", base_method=base or "")


def cell_config(spec: ExperimentSpec, cell: Cell, **values: Any) -> HafConfig:
    """The HafConfig of a cell: the shared `train` fields, its method's, its own overrides and
    seed, then `values` (what the runner sets: data files, output folder, ...)."""
    fields = {**spec.methods.get(cell.base_method, {}), **cell.overrides}
    return HafConfig.from_dict(
        {**spec.train, **fields, "seed": cell.seed, **values}, source=f"{spec.source}: cell {cell.id}"
    )


DEFAULT_METHODS = {name: {"mode": name} for name in ("reward", "dpo", "hybrid")}
_TOP = {f.name for f in dataclasses.fields(ExperimentSpec)} - {"source"}


def _fail(where: str, msg: str) -> ConfigError:
    return ConfigError(f"{where}: {msg}")


def _methods(raw: Any, where: str) -> dict[str, dict[str, Any]]:
    if raw is None:
        return dict(DEFAULT_METHODS)
    if isinstance(raw, list):
        unknown = [m for m in raw if m not in MODES]
        if unknown:
            raise _fail(where, f"methods: {unknown} are not modes ({', '.join(MODES)}); use a mapping for variants")
        return {m: {"mode": m} for m in raw}
    if isinstance(raw, dict) and raw:
        out = {}
        for name, overrides in raw.items():
            if overrides is not None and not isinstance(overrides, dict):
                raise _fail(where, f"method {name!r}: give a mapping of HafConfig fields, got {overrides!r}")
            overrides = dict(overrides or {})
            overrides.setdefault("mode", name if name in MODES else "hybrid")
            bad = [k for k in overrides if k in CELL_FIELDS]
            if bad:
                raise _fail(where, f"method {name!r} sets {bad}, which every cell sets itself")
            bad = [k for k in overrides if k in NOT_SHARED]
            if bad:
                raise _fail(where, f"method {name!r} sets {bad}: data options go on each dataset (or max_*_pairs)")
            out[str(name)] = overrides
        return out
    raise _fail(where, "methods must be a list of modes or a mapping name -> HafConfig fields")


def _datasets(raw: Any, where: str) -> dict[str, DatasetSpec]:
    if not isinstance(raw, dict) or not raw:
        raise _fail(where, "datasets must be a non-empty mapping name -> {data: ..., group: ...}")
    out = {}
    for name, body in raw.items():
        if name == MIXED:
            raise _fail(where, f"dataset name {MIXED!r} is reserved for the mixed-data cells")
        body = {"data": body} if isinstance(body, str | list) else dict(body or {})
        data = body.pop("data", None)
        if not data:
            raise _fail(where, f"dataset {name!r} has no data")
        group = str(body.pop("group", ""))
        max_pairs = body.pop("max_pairs", None)
        test_only = body.pop("test_only", False)
        if not isinstance(test_only, bool):
            raise _fail(where, f"dataset {name!r}: test_only must be true or false, not {test_only!r}")
        unknown = [k for k in body if k not in DATA_OPTIONS]
        if unknown:
            raise _fail(
                where,
                f"dataset {name!r}: unknown field(s) {unknown}; accepted: data, group, max_pairs, test_only, "
                f"{', '.join(DATA_OPTIONS)}",
            )
        out[str(name)] = DatasetSpec(
            name=str(name),
            data=[data] if isinstance(data, str) else list(data),
            group=group,
            options=body,
            max_pairs=max_pairs,
            test_only=test_only,
        )
    if all(d.test_only for d in out.values()):
        raise _fail(where, "every dataset is test_only: at least one must be trained on")
    return out


def parse_experiment(values: dict[str, Any], source: str = "experiment") -> ExperimentSpec:
    """Check an experiment mapping and build its spec; every error names the file and the field."""
    if not isinstance(values, dict):
        raise _fail(source, "an experiment file holds a mapping")
    unknown = sorted(set(values) - _TOP)
    if unknown:
        raise _fail(source, f"unknown field(s) {unknown}; accepted: {sorted(_TOP)}")
    v = dict(values)
    datasets = _datasets(v.pop("datasets", None), source)
    methods = _methods(v.pop("methods", None), source)
    spec = ExperimentSpec(
        name=str(v.pop("name", Path(source).stem)),
        datasets=datasets,
        methods=methods,
        alpha_sweep=_alpha_sweep(v.pop("alpha_sweep", None), datasets, source),
        source=source,
        **v,
    )
    _validate(spec)
    return spec


def _alpha_sweep(sweep: Any, datasets: dict[str, DatasetSpec], source: str) -> AlphaSweep | None:
    if sweep is None:
        return None
    if not isinstance(sweep, dict) or "dataset" not in sweep or "alphas" not in sweep:
        raise _fail(source, "alpha_sweep needs dataset and alphas")
    unknown = sorted(set(sweep) - {"dataset", "alphas", "seeds", "schedules"})
    if unknown:
        raise _fail(source, f"alpha_sweep: unknown field(s) {unknown}; accepted: dataset, alphas, seeds, schedules")
    alphas = sweep["alphas"]
    if not isinstance(alphas, list) or not all(isinstance(a, int | float) or a == AUTO_ALPHA for a in alphas):
        raise _fail(source, f"alpha_sweep.alphas must be a list of numbers or '{AUTO_ALPHA}', got {alphas!r}")
    parsed = AlphaSweep(
        dataset=str(sweep["dataset"]),
        alphas=[a if a == AUTO_ALPHA else float(a) for a in alphas],
        seeds=sweep.get("seeds"),
        schedules=list(sweep.get("schedules", [])),
    )
    bad = [s for s in parsed.schedules if s not in ALPHA_SCHEDULES]
    if bad:
        raise _fail(source, f"alpha_sweep.schedules: {bad} unknown; accepted: {', '.join(ALPHA_SCHEDULES)}")
    if parsed.dataset not in datasets or datasets[parsed.dataset].test_only:
        raise _fail(source, f"alpha_sweep.dataset {parsed.dataset!r} is not among the datasets trained on")
    return parsed


def _validate(spec: ExperimentSpec) -> None:
    where = spec.source
    if not spec.seeds or not all(isinstance(s, int) for s in spec.seeds):
        raise _fail(where, f"seeds must be a non-empty list of integers, got {spec.seeds!r}")
    if not isinstance(spec.train, dict):
        raise _fail(where, "train must be a mapping of HafConfig fields")
    bad = [k for k in spec.train if k in CELL_FIELDS]
    if bad:
        raise _fail(where, f"train sets {bad}, which every cell sets itself")
    bad = [k for k in spec.train if k in NOT_SHARED]
    if bad:
        raise _fail(where, f"train sets {bad}: data options go on each dataset (or max_*_pairs)")
    if not isinstance(spec.test_fraction, float | int) or not 0 < spec.test_fraction < 1:
        raise _fail(where, f"test_fraction must be in (0, 1), got {spec.test_fraction}")
    for key in ("max_train_pairs", "max_test_pairs", "mixed_max_pairs_per_source"):
        value = getattr(spec, key)
        if value is not None and (not isinstance(value, int) or value < 1):
            raise _fail(where, f"{key} must be a positive integer, got {value!r}")
    if not isinstance(spec.evals_per_run, int) or spec.evals_per_run < 1:
        raise _fail(where, f"evals_per_run must be >= 1, got {spec.evals_per_run!r}")
    if not isinstance(spec.external, dict):
        raise _fail(where, "external must be a mapping name -> RewardBench-format file")
    _validate_bon(spec)
    _validate_configs(spec)


def _validate_configs(spec: ExperimentSpec) -> None:
    """Every method's, dataset's and planned cell's HafConfig must build: a negative alpha in the
    sweep fails when the file is read, not hours into the run."""
    where = spec.source
    for method in spec.methods:
        spec.cell_config(method, spec.seeds[0])
    for name, ds in spec.datasets.items():  # every dataset's read options must build
        try:
            read_options(**ds.options, max_pairs_per_source=ds.max_pairs)
        except ConfigError as e:
            raise _fail(where, f"dataset {name!r}: {e}") from None
    for cell in plan_cells(spec):
        try:
            cell_config(spec, cell)
        except ConfigError as e:
            raise _fail(where, f"cell {cell.id}: {e}") from None


def _validate_bon(spec: ExperimentSpec) -> None:
    if spec.bon is None:
        return
    if not isinstance(spec.bon, dict):
        raise _fail(spec.source, "bon must be a mapping of Best-of-N fields (prompts, num_prompts, n, ...)")
    own = sorted(set(spec.bon) & {"split_seed", "eval_fraction"})
    if own:
        raise _fail(spec.source, f"bon: {own} come from the experiment's split (split_seed, test_fraction)")
    accepted = [*BonSpec.__dataclass_fields__, "judge"]
    unknown = sorted(set(spec.bon) - set(accepted))
    if unknown:
        raise _fail(spec.source, f"bon: unknown field(s) {unknown}; accepted: {', '.join(accepted)}")
    judge = spec.bon.get("judge")
    if judge is not None and not (Path(str(judge)) / "hafrm_config.json").is_file():
        raise _fail(spec.source, f"bon: judge {judge!r} is not a model folder written by `hafrm train`")


def load_experiment(path: str | Path) -> ExperimentSpec:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such experiment file")
    try:
        values = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    return parse_experiment(values or {}, source=str(path))
