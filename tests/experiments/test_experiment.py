"""`hafrm experiment`: the spec, the cells, resuming, and the analysis (hand-worked values)."""

import json
import math
import shutil
from pathlib import Path
from unittest.mock import ANY

import pytest
from typer.testing import CliRunner

from hafrm.apps.cli import app
from hafrm.errors import ConfigError
from hafrm.evaluation.rewardbench import REWARDBENCH_SECTIONS, rewardbench_sections
from hafrm.experiments import parse_experiment, plan_cells
from hafrm.experiments.analysis import (
    accuracy_grid,
    alpha_sweep,
    analyse,
    best_of_n,
    calibration,
    checkpoint_selection,
    comparisons,
    in_distribution,
    out_of_distribution,
    paired_interval,
    sign_test,
)
from hafrm.experiments.report import _comparison_rows, fig_comparisons
from hafrm.experiments.runner import prepare_data

runner = CliRunner()


def _spec(**extra):
    values = {
        "name": "t",
        "datasets": {
            "arith": {"data": "builtin:arithmetic", "group": "reasoning"},
            "facts": {"data": "builtin:facts", "group": "reasoning"},
            "format": {"data": "builtin:format", "group": "style"},
        },
        "seeds": [0, 1],
    }
    return parse_experiment(values | extra, source="exp.yaml")


def test_plan_is_methods_by_datasets_by_seeds_plus_mixed_and_sweep():
    spec = _spec(mixed=True, alpha_sweep={"dataset": "arith", "alphas": [0, 0.2, 1], "schedules": ["decay"]})
    cells = plan_cells(spec)
    ids = [c.id for c in cells]
    assert len(ids) == len(set(ids))
    main = [c for c in cells if c.kind == "main"]
    assert len(main) == 3 * 3 * 2  # methods x datasets x seeds
    assert len([c for c in cells if c.kind == "mixed"]) == 3 * 2
    sweep = [c for c in cells if c.kind == "sweep"]
    # alpha 0.2 is the main hybrid cell's: not run twice
    assert sorted({c.method for c in sweep}) == ["hybrid@alpha=0", "hybrid@alpha=1", "hybrid@schedule=decay"]
    assert len(sweep) == 3 * 2 and all(c.train == "arith" for c in sweep)
    assert ids[:9] == [f"{m}--{d}--s0" for d in ("arith", "facts", "format") for m in ("reward", "dpo", "hybrid")]


@pytest.mark.parametrize(
    "extra, message",
    [
        ({"methods": ["reward", "ppo"]}, "methods: ['ppo'] are not modes"),
        ({"methods": {"haf": {"alpha": -1}}}, "alpha must be >= 0"),
        ({"methods": {"haf": {"seed": 3}}}, "sets ['seed'], which every cell sets itself"),
        ({"seeds": []}, "seeds must be a non-empty list"),
        ({"colour": "red"}, "unknown field(s) ['colour']"),
        ({"datasets": {"a": {"group": "x"}}}, "dataset 'a' has no data"),
        ({"datasets": {"a": {"data": "x.jsonl", "formt": "hh"}}}, "unknown field(s) ['formt']"),
        ({"alpha_sweep": {"dataset": "nope", "alphas": [0]}}, "'nope' is not among the datasets"),
        ({"alpha_sweep": {"dataset": "arith", "alphas": [0], "schedules": ["zigzag"]}}, "['zigzag'] unknown"),
        ({"bon": {"prompts": "builtin", "samples": 3}}, "bon: unknown field(s) ['samples']"),
        ({"bon": {"prompts": "builtin", "split_seed": 3}}, "come from the experiment's split"),
        ({"bon": {"prompts": "builtin", "judge": "/nope"}}, "judge '/nope' is not a model folder"),
        ({"train": {"on_error": "skip"}}, "data options go on each dataset"),
        ({"methods": {"haf": "hybrid"}}, "give a mapping of HafConfig fields"),
        ({"alpha_sweep": {"dataset": "arith", "alphas": [-1]}}, "cell hybrid@alpha=-1--arith--s0"),
        ({"alpha_sweep": {"dataset": "arith", "alphas": ["often"]}}, "alphas must be a list of numbers or 'auto'"),
        ({"datasets": {"a": {"data": "x.jsonl", "on_error": "ignore"}}}, "dataset 'a'"),
        ({"train": {"loss": "banana"}}, "loss"),
    ],
)
def test_bad_spec_names_the_file_and_field(extra, message):
    with pytest.raises(ConfigError) as e:
        _spec(**extra)
    assert message in str(e.value) and "exp.yaml" in str(e.value)


def _cell(method, mode, train, seed, scores, history=(), kind="main"):
    return {
        "cell": {"method": method, "train": train, "seed": seed, "kind": kind, "id": f"{method}--{train}--s{seed}"},
        "mode": mode,
        "inference_head": "implicit" if mode == "dpo" else "reward",
        "alpha": 0.2,
        "scores": scores,
        "history": list(history),
        "train_logs": [],
        "train_pairs": 10,
        "steps": 2,
        "seconds": 1.0,
        "precision": "fp32",
    }


def _s(chosen, rejected, implicit=None):
    d = {"reward_chosen": chosen, "reward_rejected": rejected, "subsets": [""] * len(chosen)}
    if implicit:
        d["implicit_chosen"], d["implicit_rejected"] = implicit
    return d


def test_in_and_out_of_distribution_by_hand():
    spec = _spec(seeds=[0, 1])
    # reward model: trained on arith, tested on arith (seed 0: 3/4, seed 1: 1/4) and facts (1/2)
    cells = [
        _cell("reward", "reward", "arith", 0, {"arith": _s([1, 1, 1, 0], [0, 0, 0, 1]), "facts": _s([1, 0], [0, 1])}),
        _cell("reward", "reward", "arith", 1, {"arith": _s([1, 0, 0, 0], [0, 1, 1, 1]), "facts": _s([1, 1], [0, 1])}),
        _cell("reward", "reward", "facts", 0, {"facts": _s([1, 1], [1, 0]), "arith": _s([0], [1])}),
    ]
    grid = accuracy_grid(cells)
    ind = in_distribution(grid, ["arith", "facts"])
    arith = ind["reward"]["datasets"]["arith"]
    assert arith["mean"] == pytest.approx(0.5) and arith["std"] == pytest.approx(math.sqrt(0.125))
    assert ind["reward"]["datasets"]["facts"]["mean"] == pytest.approx(0.75)  # a tie counts half
    # the average over datasets is taken per seed, for the seeds every dataset has: only seed 0
    assert ind["reward"]["average"]["values"] == [pytest.approx((0.75 + 0.75) / 2)]
    assert ind["reward"]["missing_seeds"] == {"facts": [1]}
    # a dataset with no cell at all: no average (not an average over the others)
    assert in_distribution(grid, list(spec.datasets))["reward"]["average"]["n"] == 0
    ood = out_of_distribution(grid, spec)["reward"]
    assert ood["matrix"]["arith"]["facts"] == pytest.approx((0.5 + 0.75) / 2)
    assert ood["matrix"]["facts"]["arith"] == 0.0
    assert ood["ood_average"] == pytest.approx((0.625 + 0.0) / 2)
    assert ood["within_group_average"] == pytest.approx(0.3125)  # both in "reasoning"
    assert math.isnan(ood["across_group_average"])


def test_hybrid_contributes_its_implicit_head_as_a_row():
    cells = [_cell("hybrid", "hybrid", "arith", 0, {"arith": _s([1, 0], [0, 1], implicit=([1, 1], [0, 0]))})]
    ind = in_distribution(accuracy_grid(cells), ["arith"])
    assert ind["hybrid"]["datasets"]["arith"]["mean"] == 0.5
    assert ind["hybrid (implicit)"]["datasets"]["arith"]["mean"] == 1.0


def test_sign_test_by_hand():
    assert sign_test(0, 0) == 1.0
    assert sign_test(3, 0) == pytest.approx(2 / 8)  # P(all 3 one way) both tails
    assert sign_test(1, 4) == pytest.approx(2 * (1 + 5) / 32)
    assert sign_test(5, 5) == 1.0


def test_comparisons_pair_seeds_and_test_pairs(tmp_path):
    spec = _spec(seeds=[0, 1], datasets={"a": {"data": "builtin:arithmetic"}, "b": {"data": "builtin:facts"}})
    right, wrong = _s([1], [0]), _s([0], [1])

    def cell(method, mode, train, seed, on_a, on_b):
        return _cell(method, mode, train, seed, {"a": on_a, "b": on_b})

    cells = [
        # hybrid: right everywhere but out of distribution on seed 1
        cell("hybrid", "hybrid", "a", 0, right, right), cell("hybrid", "hybrid", "b", 0, right, right),
        cell("hybrid", "hybrid", "a", 1, right, wrong), cell("hybrid", "hybrid", "b", 1, right, right),
        # reward: wrong in distribution on seed 0 only, right out of it
        cell("reward", "reward", "a", 0, wrong, right), cell("reward", "reward", "b", 0, right, wrong),
        cell("reward", "reward", "a", 1, right, right), cell("reward", "reward", "b", 1, right, right),
        cell("reward", "reward", "a", 2, right, right),  # a seed hybrid lacks: not paired
    ]  # fmt: skip
    out = comparisons(cells, spec)["hybrid vs reward"]
    ind, ood = out["in_distribution"], out["out_of_distribution"]
    assert ind["difference"]["values"] == [1.0, 0.0] and ind["seeds_won"] == 1 and ind["seeds"] == 2
    assert ind["b"]["values"] == [0.0, 1.0]
    assert (ind["pairs"], ind["pairs_a_better"], ind["pairs_b_better"]) == (4, 2, 0)
    assert ood["difference"]["values"] == [0.0, -0.5] and ood["seeds_won"] == 0
    assert (ood["pairs_a_better"], ood["pairs_b_better"]) == (0, 1)
    assert ood["sign_test_p"] == 1.0
    # the same for each training set's cells alone
    per_set = out["per_train_set"]
    assert per_set["a"]["in_distribution"]["difference"]["values"] == [1.0, 0.0]
    assert per_set["b"]["in_distribution"]["difference"]["values"] == [1.0, 0.0]
    assert per_set["a"]["out_of_distribution"]["difference"]["values"] == [0.0, -1.0]
    assert per_set["b"]["out_of_distribution"]["difference"]["values"] == [0.0, 0.0]
    # a seed with only part of its cells (a run under way) is left out of both parts, and listed;
    # the training set whose cells it has counts it
    cells.append(cell("hybrid", "hybrid", "a", 2, wrong, wrong))
    out = comparisons(cells, spec)["hybrid vs reward"]
    assert out["in_distribution"]["seeds"] == 2 and out["in_distribution"]["seeds_incomplete"] == [2]
    assert out["out_of_distribution"]["pairs"] == 4 and out["out_of_distribution"]["seeds_incomplete"] == [2]
    assert out["per_train_set"]["a"]["in_distribution"]["difference"]["values"] == [1.0, 0.0, -1.0]
    assert out["per_train_set"]["b"]["in_distribution"]["seeds"] == 2
    rows = [where for where, _ in _comparison_rows(out)]
    assert rows == ["in distribution", "out of distribution", "in distribution, trained on a",
                    "out of distribution, trained on a", "in distribution, trained on b",
                    "out of distribution, trained on b"]  # fmt: skip
    # the report's figure of these rows: a PNG when there are comparisons, none when there are none
    assert fig_comparisons({"comparisons": {"hybrid vs reward": out}}, tmp_path).stat().st_size > 0
    assert fig_comparisons({"comparisons": {}}, tmp_path) is None


def test_a_test_only_dataset_is_never_trained_on_and_held_out_whole(tmp_path):
    """`test_only: true`: no cell trains on the set, every pair of it is a test pair of every cell,
    and the comparisons count it out of distribution only."""
    spec = _spec(datasets={"a": {"data": "builtin:arithmetic"}, "b": {"data": "builtin:facts"},
                           "c": {"data": "builtin:format", "test_only": True}}, mixed=True)  # fmt: skip
    assert spec.train_sets == ["a", "b"]
    cells = plan_cells(spec)
    assert {c.train for c in cells} == {"a", "b", "mixed"} and len(cells) == 3 * 3 * 2
    small = _spec(datasets={"a": {"data": "builtin:arithmetic"}, "c": {"data": "builtin:format", "test_only": True}})
    summary = prepare_data(small, tmp_path)
    assert summary["c"]["train_pairs"] == 0 and summary["c"]["test_pairs"] == summary["c"]["pairs_read"] > 0
    assert summary["a"]["train_pairs"] > 0 and summary["a"]["test_pairs"] < summary["a"]["pairs_read"]
    right, wrong = _s([1], [0]), _s([0], [1])
    cells = [
        _cell("hybrid", "hybrid", "a", 0, {"a": right, "b": right, "c": right}),
        _cell("hybrid", "hybrid", "b", 0, {"a": right, "b": right, "c": right}),
        _cell("reward", "reward", "a", 0, {"a": wrong, "b": right, "c": wrong}),
        _cell("reward", "reward", "b", 0, {"a": wrong, "b": right, "c": wrong}),
    ]
    out = comparisons(cells, spec)["hybrid vs reward"]
    assert out["in_distribution"]["difference"]["values"] == [0.5]  # a and b only
    assert out["out_of_distribution"]["pairs"] == 4  # a->b, a->c, b->a, b->c
    assert out["out_of_distribution"]["difference"]["values"] == [0.75]
    assert list(analyse(cells, spec)["in_distribution"]["hybrid"]["datasets"]) == ["a", "b"]
    with pytest.raises(ConfigError, match="not among the datasets trained on"):
        _spec(datasets={"a": {"data": "builtin:arithmetic"}, "c": {"data": "builtin:format", "test_only": True}},
              alpha_sweep={"dataset": "c", "alphas": ["auto"]})  # fmt: skip


def test_paired_interval_resamples_pairs_and_seeds():
    # one seed, 400 test pairs, a better on 100 and tied on the rest: the mean difference 0.25 with
    # standard error sqrt(0.25 * 0.75 / 400) = 0.0217, so about 0.25 -/+ 0.042
    a = {("t", "t", 0): [1.0] * 100 + [0.0] * 300}
    b = {("t", "t", 0): [0.0] * 400}
    lo, hi = paired_interval(a, b, {0: list(a)})
    assert lo == pytest.approx(0.25 - 1.96 * 0.02165, abs=0.01) and hi == pytest.approx(0.25 + 1.96 * 0.02165, abs=0.01)
    assert paired_interval(a, b, {0: list(a)}) == [lo, hi]  # seeded
    # the same pairs over three seeds whose differences disagree: the seeds' spread widens it
    a3 = {("t", "t", s): [float(s == 0)] * 400 for s in range(3)}
    b3 = {k: [0.0] * 400 for k in a3}
    lo3, hi3 = paired_interval(a3, b3, {s: [("t", "t", s)] for s in range(3)})
    assert lo3 == pytest.approx(0.0) and hi3 == pytest.approx(1.0)  # all three seeds drawn alike happens


def test_comparisons_per_skill_and_between_haf_rows():
    spec = _spec(seeds=[0], datasets={"t": {"data": "builtin"}})

    def scores(correct):  # four pairs: two arithmetic, two facts
        d = _s([float(c) for c in correct], [0.5] * 4)
        d["subsets"] = ["arithmetic.add", "arithmetic.multiply", "facts.capital", "facts.language"]
        return d

    cells = [
        _cell("hybrid", "hybrid", "t", 0, {"t": scores([1, 1, 0, 0])}),
        _cell("hybrid_auto", "hybrid", "t", 0, {"t": scores([1, 1, 1, 0])}),
        _cell("reward", "reward", "t", 0, {"t": scores([0, 0, 0, 0])}),
    ]
    out = comparisons(cells, spec)
    skills = out["hybrid vs reward"]["per_skill"]
    assert skills["arithmetic"]["difference"]["values"] == [1.0] and skills["facts"]["difference"]["values"] == [0.0]
    assert skills["arithmetic"]["ci95"] == [1.0, 1.0]
    # a later HaF row against an earlier one, once
    assert out["hybrid_auto vs hybrid"]["in_distribution"]["difference"]["values"] == [0.25]
    assert "hybrid vs hybrid_auto" not in out
    assert out["hybrid_auto vs hybrid"]["per_skill"]["facts"]["difference"]["values"] == [0.5]


def test_alpha_sweep_with_auto_against_the_main_hybrid_cell():
    spec = _spec(seeds=[0, 1], alpha_sweep={"dataset": "arith", "alphas": [1, "auto"]})
    sweep = [c for c in plan_cells(spec) if c.kind == "sweep"]
    assert [c.id for c in sweep if c.seed == 0] == ["hybrid@alpha=1--arith--s0", "hybrid@alpha=auto--arith--s0"]
    assert spec.cell_config("hybrid", 0).replace(**sweep[1].overrides).auto_alpha

    def cell(method, kind, alpha, seed, correct, facts=None):
        on = {"arith": correct} | ({"facts": facts, "format": [1, 1, 0, 0]} if facts else {})
        scores = {name: _s([float(x) for x in c], [0.5] * 4) for name, c in on.items()}
        return _cell(method, "hybrid", "arith", seed, scores, kind=kind) | {"alpha": alpha}

    cells = [
        cell("hybrid", "main", 0.2, 0, [1, 0, 0, 0], [1, 1, 0, 0]),
        cell("hybrid", "main", 0.2, 1, [1, 1, 0, 0], [1, 1, 0, 0]),
        cell("hybrid@alpha=auto", "sweep", "auto", 0, [1, 1, 1, 0], [1, 1, 1, 1]),
        cell("hybrid@alpha=auto", "sweep", "auto", 1, [1, 1, 0, 0], [0, 0, 0, 0]),
        cell("hybrid@alpha=1", "sweep", 1.0, 0, [0, 0, 0, 0]),  # tested on its own set only
    ]  # fmt: skip
    out = alpha_sweep(cells, spec)
    assert list(out["alphas"]) == ["0.2", "1", "auto"]
    auto = out["against_main"]["auto vs 0.2"]["reward"]
    assert auto["in_distribution"]["difference"]["values"] == [0.5, 0.0] and auto["in_distribution"]["seeds_won"] == 1
    # out of distribution: the average over facts and format, (1 - 0.5 + 0) / 2 and (0 - 0.5 + 0) / 2
    assert auto["out_of_distribution"]["difference"]["values"] == [0.25, -0.25]
    assert out["against_main"]["1 vs 0.2"]["reward"] == {"in_distribution": ANY}
    assert out["against_main"]["1 vs 0.2"]["reward"]["in_distribution"]["seeds"] == 1


def test_best_of_n_with_a_judge_by_hand():
    # two prompts, two candidates each; the judge prefers candidate 1 then candidate 2
    candidates = [{"prompt_index": 0, "judge": 0.0}, {"prompt_index": 0, "judge": 1.0},
                  {"prompt_index": 1, "judge": 3.0}, {"prompt_index": 1, "judge": 2.0}]  # fmt: skip

    def cell(method, mode, seed, picks_scores):
        c = _cell(method, mode, "a", seed, {})
        c["bon"] = {c["inference_head"]: picks_scores}
        return c

    cells = [
        cell("reward", "reward", 0, [0, 1, 1, 0]),  # picks 1 and 2: both the judge's
        cell("dpo", "dpo", 0, [1, 0, 0, 1]),  # picks 0 and 3: neither
        cell("dpo", "dpo", 1, [1, 0, 1, 0]),  # picks 0 and 2 (no reward cell with seed 1 to pair)
    ]
    j = best_of_n(cells, candidates)["judge"]
    assert j["candidates_mean"] == 1.5 and j["oracle"] == 2.0
    assert j["score"]["reward"]["mean"] == 2.0 and j["score"]["dpo"]["values"] == [1.0, 1.5]
    assert j["top_k_recall"]["dpo"]["1"]["values"] == [0.0, 0.5]
    assert j["win_rates"] == {"reward vs dpo": {"mean": 1.0, "std": 0.0, "n": 1, "values": [1.0]}}


def test_checkpoint_selection_picks_on_one_half_and_scores_the_other():
    # step 1 is right on even pairs, step 2 on odd pairs; step 2 has the larger chosen reward
    h1 = {"step": 1, "scores": {"a": _s([1, 0, 1, 0], [0, 1, 0, 1])}}
    h2 = {"step": 2, "scores": {"a": _s([0, 5, 0, 5], [1, 0, 1, 0])}}
    sel = checkpoint_selection([_cell("reward", "reward", "a", 0, {}, [h1, h2])])["reward"]
    # accuracy picked on evens -> step 1 -> 0 on odds; on odds -> step 2 -> 0 on evens
    assert sel["accuracy"]["mean"] == 0.0
    assert sel["oracle"]["mean"] == 1.0
    assert sel["step"]["mean"] == 0.5  # the last step: right on odds only
    # on evens step 1 has the larger chosen reward (1 vs 0), margin (+1 vs -1) and lower loss;
    # on odds step 2 does (5 vs 0, +5 vs -1): each picks the step that is wrong on the other half
    for criterion in ("reward", "margin", "loss"):
        assert sel[criterion]["mean"] == 0.0, criterion


def test_checkpoint_selection_halves_by_split_group():
    # pairs 0 and 1 are one group (half 0), 2 and 3 another (half 1): step 1 is right on half 0 only,
    # step 2 on half 1 only; an even/odd split would have mixed them
    h1 = {"step": 1, "scores": {"a": _s([1, 1, 0, 0], [0, 0, 1, 1]) | {"halves": [0, 0, 1, 1]}}}
    h2 = {"step": 2, "scores": {"a": _s([0, 0, 1, 1], [1, 1, 0, 0]) | {"halves": [0, 0, 1, 1]}}}
    sel = checkpoint_selection([_cell("reward", "reward", "a", 0, {}, [h1, h2])])["reward"]
    assert sel["accuracy"]["mean"] == 0.0 and sel["oracle"]["mean"] == 1.0


def test_calibration_bins_by_confidence():
    # margins 0 (conf 0.5, half right), +/-10 (conf ~1): right once, wrong once
    cal = calibration([_cell("reward", "reward", "a", 0, {"a": _s([0, 10, 0], [0, 0, 10])})])["reward"]
    assert cal["pairs"] == 3
    top = cal["bins"][-1]
    assert top["pairs"] == 2 and top["accuracy"] == 0.5 and top["confidence"] == pytest.approx(1.0, abs=1e-4)
    assert cal["ece"] == pytest.approx(2 / 3 * 0.5, abs=1e-4)


def test_rewardbench_sections_weight_subsets_by_example_count():
    per = {s: 1.0 for subs in REWARDBENCH_SECTIONS.values() for s in subs}
    per["math-prm"] = 0.0  # 984 of the 1,968 reasoning examples
    sec = rewardbench_sections(per)
    assert sec["Reasoning"] == pytest.approx(0.5) and sec["Chat"] == 1.0
    assert sec["Score"] == pytest.approx(3.5 / 4)
    assert rewardbench_sections({"alpacaeval-easy": 1.0}) == {}  # incomplete sections are left out


def test_experiment_end_to_end_tiny_model_resumes(tiny_model_dir, tmp_path):
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(
        json.dumps(
            {
                "name": "tiny",
                "seeds": [0],
                "train": {"model": str(tiny_model_dir), "freeze_layers": 0,
                          "per_device_train_batch_size": 4, "max_steps": 3},
                "datasets": {"arith": {"data": "builtin:arithmetic", "max_pairs": 40},
                             "facts": {"data": "builtin:facts", "max_pairs": 40}},
                "mixed": True,
                "evals_per_run": 3,
                "alpha_sweep": {"dataset": "arith", "alphas": [0, 0.2], "schedules": ["decay"]},
                "bon": {"prompts": "builtin:arithmetic", "num_prompts": 3, "n": 2, "max_new_tokens": 4,
                        "policy": str(tiny_model_dir)},
            }
        )
    )  # fmt: skip
    out = tmp_path / "out"
    first = runner.invoke(app, ["experiment", "--config", str(cfg), "--output-dir", str(out)])
    assert first.exit_code == 0, first.output
    assert not list((out / "cells").glob("*/model/checkpoint-*"))  # no weights left behind (keep_models off)
    results = json.loads((out / "results.json").read_text())
    assert results["run"]["cells_planned"] == 3 * 2 + 3 + 2 and results["run"]["cells_run_now"] == 11
    assert set(results["in_distribution"]) == {"reward", "dpo", "hybrid", "hybrid (implicit)"}
    ood = results["out_of_distribution"]["hybrid"]["matrix"]
    assert set(ood["arith"]) == {"arith", "facts"} and 0 <= ood["arith"]["facts"] <= 1
    assert results["mixed"]["reward"]["facts"]["mixed"]["n"] == 1
    assert set(results["alpha_sweep"]["alphas"]) == {"0", "0.2"}
    assert set(results["alpha_sweep"]["schedules"]) == {"constant (alpha 0.2)", "decay (alpha 0.2)"}
    assert set(results["checkpoint_selection"]["dpo"]) == {"reward", "accuracy", "loss", "margin", "step", "oracle"}
    bon = results["best_of_n"]
    assert bon["prompts"] == 3 and set(bon["gold_correct"]) == {"reward", "dpo", "hybrid", "hybrid (implicit)"}
    assert bon["gold_correct"]["hybrid"]["n"] == 3  # two training sets and the mixed cell
    assert (
        len(cell_bon := json.loads((out / "cells" / "dpo--facts--s0" / "cell.json").read_text())["bon"]["implicit"])
        == 6
    )
    assert all(isinstance(x, float) for x in cell_bon)
    budget = {b["cell"]: b for b in results["budgets"]}
    assert budget["hybrid--arith--s0"]["steps"] == 3 and budget["hybrid--arith--s0"]["train_pairs"] > 0
    cell = json.loads((out / "cells" / "hybrid--arith--s0" / "cell.json").read_text())
    assert [h["step"] for h in cell["history"]] == [1, 2, 3]
    assert not list((out / "cells").glob("*/model/*.safetensors"))  # weights are not kept by default
    assert json.loads((out / "cells" / "hybrid--arith--s0" / "model" / "metrics.json").read_text())["train/steps"] == 3
    html = (out / "report.html").read_text()
    assert "In distribution" in html and "data:image/png;base64," in html
    md = (out / "results.md").read_text()
    assert "## In distribution (Table 2)" in md and "| reward |" in md and "![ood_heatmap](ood_heatmap.png)" in md
    assert "![comparisons](comparisons.png)" in md
    datasets = json.loads((out / "data" / "datasets.json").read_text())
    assert datasets["arith"]["train_pairs"] + datasets["arith"]["test_pairs"] == 40
    # a rerun reuses every cell; a changed budget re-runs every cell
    again = runner.invoke(app, ["experiment", "--config", str(cfg), "--output-dir", str(out)])
    assert again.exit_code == 0 and "0 cells run, 11 reused" in again.output
    # a judge model for Best-of-N: every cell is kept (a cell never sees the judge), the judge scores
    # the candidates once, and the report gains its score, top-k recall and win rates
    from hafrm.config import HafConfig
    from hafrm.training.recipe import train

    judge = tmp_path / "judge"
    train(HafConfig(model=str(tiny_model_dir), freeze_layers=0, builtin_pairs=24, per_device_train_batch_size=4,
                    max_steps=2, output_dir=str(judge)))  # fmt: skip
    spec = json.loads(cfg.read_text())
    spec["bon"]["judge"] = str(judge)
    cfg.write_text(json.dumps(spec))
    judged = runner.invoke(app, ["experiment", "--config", str(cfg), "--output-dir", str(out)])
    assert judged.exit_code == 0 and "0 cells run, 11 reused" in judged.output, judged.output
    j = json.loads((out / "results.json").read_text())["best_of_n"]["judge"]
    assert set(j["score"]) == {"reward", "dpo", "hybrid", "hybrid (implicit)"} and j["score"]["dpo"]["n"] == 3
    assert j["oracle"] >= j["score"]["hybrid"]["mean"] and j["top_k_recall"]["hybrid"]["2"]["mean"] == 1.0  # n = 2
    assert j["win_rates"]["dpo vs reward"]["n"] == 3  # paired by training set and seed: arith, facts, mixed
    assert "(judge model)" in (out / "results.md").read_text()
    assert json.loads((out / "bon" / "judge.json").read_text())["judge"] == str(judge)
    # a judge changed since its scores were made: the report leaves them out rather than use stale ones
    head = judge / "reward_head.safetensors"
    head.write_bytes(head.read_bytes())
    stale_judge = runner.invoke(app, ["experiment", "--config", str(cfg), "--output-dir", str(out), "--report-only"])
    assert stale_judge.exit_code == 0 and "judge" not in json.loads((out / "results.json").read_text())["best_of_n"]
    # a cell the current plan does not have (a seed since removed) is left out of the analysis
    stale = out / "cells" / "reward--arith--s9"
    stale.mkdir()
    record = json.loads((out / "cells" / "reward--arith--s0" / "cell.json").read_text())
    record["cell"] |= {"seed": 9, "id": "reward--arith--s9"}
    (stale / "cell.json").write_text(json.dumps(record))
    redo = runner.invoke(app, ["experiment", "--config", str(cfg), "--output-dir", str(out), "--report-only"])
    assert redo.exit_code == 0, redo.output
    results = json.loads((out / "results.json").read_text())
    assert results["cells_left_out_stale"] == ["reward--arith--s9"] and results["cells_finished"] == 11
    assert results["in_distribution"]["reward"]["datasets"]["arith"]["n"] == 1
    assert "11 cells in the report; 1 left out, their config or data changed: reward--arith--s9" in redo.output
    # the cells alone copied into a new folder (as docs/NAME/cells are): the report writes the same
    # split files again, so every cell still matches and the tables are the same
    fresh = tmp_path / "fresh"
    shutil.copytree(out / "cells", fresh / "cells")
    copied = runner.invoke(app, ["experiment", "--config", str(cfg), "--output-dir", str(fresh), "--report-only"])
    assert copied.exit_code == 0 and "11 cells in the report; 1 left out" in copied.output, copied.output
    again = json.loads((fresh / "results.json").read_text())
    assert again["cells_finished"] == 11 and again["in_distribution"] == results["in_distribution"]


@pytest.mark.parametrize(("precision", "frozen"), [("fp32", 0), ("bf16", 0), ("bf16", 2)])  # 2: the prefix cache
def test_extra_eval_in_process_equals_evaluating_the_saved_model(tiny_model_dir, tmp_path, precision, frozen):
    from hafrm.apps.commands import evaluate_model
    from hafrm.config import HafConfig
    from hafrm.data.inspect import pair_record
    from hafrm.evaluation.scoring import RewardModel
    from hafrm.training.recipe import train
    from helpers import make_pairs

    extra = make_pairs(6)
    path = tmp_path / "extra.jsonl"
    path.write_text("".join(json.dumps(pair_record(p)) + "\n" for p in extra))
    cfg = HafConfig(model=str(tiny_model_dir), freeze_layers=frozen, builtin_pairs=24, per_device_train_batch_size=4,
                    max_steps=2, output_dir=str(tmp_path / "m"), precision=precision)  # fmt: skip
    result = train(cfg, extra_eval={"hand": extra})
    assert result.precision == precision
    in_process = result.extra_eval["hand"]
    saved, _ = evaluate_model(RewardModel.from_pretrained(tmp_path / "m"), [str(path)])
    assert (in_process.reward_chosen - saved.reward_chosen).abs().max() < 1e-5
    assert (in_process.implicit_rejected - saved.implicit_rejected).abs().max() < 1e-5
    assert in_process.reward_chosen.abs().max() > 0  # the head trained: the check is not 0 == 0


def test_a_methods_own_logging_steps_is_kept(tmp_path):
    from hafrm.experiments.runner import cell_setup, prepare_data

    spec = _spec(methods={"haf": {"mode": "hybrid", "logging_steps": 7}, "reward": {"mode": "reward"}})
    prepare_data(spec, tmp_path)
    cells = {c.id: c for c in plan_cells(spec)}
    assert cell_setup(spec, cells["haf--arith--s0"], tmp_path).config.logging_steps == 7
    cfg = cell_setup(spec, cells["reward--arith--s0"], tmp_path).config
    n_train = sum(1 for _ in (tmp_path / "data" / "arith.train.jsonl").open())
    steps = int(math.ceil(n_train / cfg.per_device_train_batch_size) * cfg.num_train_epochs)
    assert cfg.logging_steps == max(1, steps // 20)  # a curve's worth


SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data is not here")
@pytest.mark.parametrize("name", ["paper", "powered"])
def test_committed_cells_still_match_their_config(name, tmp_path, monkeypatch):
    # docs/NAME/cells hold hours of finished cells; a rerun of experiments/NAME.yaml continues
    # from them only while their fingerprints (config, code version, data bytes) still match.
    from hafrm.experiments.runner import cell_setup, prepare_data
    from hafrm.experiments.spec import load_experiment

    root = Path(__file__).resolve().parents[2]
    monkeypatch.chdir(root)  # the file's ../shared paths are relative to the checkout
    spec = load_experiment(root / "experiments" / f"{name}.yaml")
    prepare_data(spec, tmp_path)
    cells = {c.id: c for c in plan_cells(spec)}
    committed = sorted((root / "docs" / name / "cells").glob("*/cell.json"))
    assert committed
    for f in committed:
        fingerprint = cell_setup(spec, cells[f.parent.name], tmp_path).fingerprint
        assert json.loads(f.read_text())["fingerprint"] == fingerprint, f.parent.name


def test_the_field_lists_come_from_the_config_and_name_its_fields():
    from hafrm.config import HafConfig
    from hafrm.experiments import runner, spec

    fields = set(HafConfig.fields_in())
    for names in (spec.CELL_FIELDS, spec.DATA_OPTIONS, spec.NOT_SHARED, runner.UNHASHED_PATHS, runner.SPEED_ONLY):
        assert names and set(names) <= fields, names
    assert set(spec.CELL_FIELDS) == {"data", "eval_data", "seed", "output_dir", "select_by", "eval_steps",
                                     "save_steps", "resume"}  # fmt: skip
    assert spec.DATA_OPTIONS == ("data_format", "data_map", "on_error", "pku_label", "pku_safety_filter")
    assert set(spec.NOT_SHARED) == {*spec.DATA_OPTIONS, "max_pairs_per_source", "builtin_pairs", "eval_fraction"}
    assert "experiments.runner" not in Path(spec.__file__).read_text()  # spec does not import the runner


def test_a_cells_config_is_built_in_the_spec():
    from hafrm.experiments.spec import cell_config

    spec = _spec(train={"max_steps": 3}, alpha_sweep={"dataset": "arith", "alphas": [0.5]})
    cell = next(c for c in plan_cells(spec) if c.kind == "sweep")
    cfg = cell_config(spec, cell, output_dir="o")
    assert (cfg.alpha, cfg.max_steps, cfg.seed, cfg.output_dir) == (0.5, 3, cell.seed, "o")


def test_speed_only_options_keep_a_cells_fingerprint(tmp_path):
    """A finished cell is reused when only where the caches live or how much of them is kept
    in memory changed; a changed budget makes it run again."""
    from hafrm.experiments.runner import cell_setup

    def fingerprint(**train):
        spec = _spec(seeds=[0], train={"max_steps": 3, **train})
        prepare_data(spec, tmp_path)
        return cell_setup(spec, plan_cells(spec)[0], tmp_path).fingerprint

    base = fingerprint()
    assert fingerprint(cache_dir=str(tmp_path / "elsewhere"), prefix_cache_mib=16) == base
    assert fingerprint(max_steps=4) != base
