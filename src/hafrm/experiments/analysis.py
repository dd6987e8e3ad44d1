"""From finished cells to the paper's tables: accuracy in and out of distribution, mixed data,
external sets in RewardBench's weighting, checkpoint selection, calibration and the alpha sweep.

Every accuracy counts a tie as half right. A "method" here is a row of a table: the spec's
methods scored by their inference head, plus `hybrid (implicit)` for HaF's policy head.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from hafrm.evaluation.bon import groups, picks, topk_recall, win_rate
from hafrm.evaluation.rewardbench import rewardbench_sections
from hafrm.experiments.spec import MIXED, ExperimentSpec, alpha_name
from hafrm.heads import HEAD_NAMES, SCORE_KEYS
from hafrm.objectives.accuracy import accuracy

SELECTION = ("reward", "accuracy", "loss", "margin", "step")
CALIBRATION_BINS = 10
BOOTSTRAP = 2000  # resamples behind each paired 95 % interval


def pair_accuracy(chosen: Sequence[float], rejected: Sequence[float]) -> list[float]:
    return [accuracy(c, r) for c, r in zip(chosen, rejected, strict=True)]


def mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def mean_std(xs: Sequence[float]) -> dict[str, Any]:
    """Mean, sample standard deviation (0 for one value) and the values, over seeds."""
    xs = [x for x in xs if not math.isnan(x)]
    std = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return {"mean": mean(xs), "std": std, "n": len(xs), "values": xs}


def rows_of(cell: dict[str, Any]) -> list[tuple[str, str]]:
    """The table rows a cell contributes: (row name, head)."""
    method = cell["cell"]["method"]
    rows = [(method, cell["inference_head"])]
    if cell["mode"] == "hybrid":
        rows.append((f"{method} (implicit)", "implicit"))
    return rows


def head_accuracy(scores: dict[str, Any], head: str) -> float:
    c, r = SCORE_KEYS[head]
    if c not in scores:
        return float("nan")
    return mean(pair_accuracy(scores[c], scores[r]))


def _by(cells: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [c for c in cells if c["cell"]["kind"] == kind]


def accuracy_grid(cells: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, dict[int, float]]]]:
    """row -> train set -> test set -> seed -> accuracy (main and mixed cells)."""
    grid: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(dict)))
    for cell in _by(cells, "main") + _by(cells, "mixed"):
        for row, head in rows_of(cell):
            for test, scores in cell["scores"].items():
                if not test.startswith("external/"):
                    grid[row][cell["cell"]["train"]][test][cell["cell"]["seed"]] = head_accuracy(scores, head)
    return grid


def in_distribution(grid, datasets: list[str]) -> dict[str, Any]:
    """The paper's Table 2: each row trained and tested on each dataset, and the average."""
    table = {}
    for row, by_train in grid.items():
        seeds = {d: by_train[d][d] for d in datasets if by_train.get(d, {}).get(d)}
        if not seeds:
            continue
        per = {d: mean_std(list(s.values())) for d, s in seeds.items()}
        # the average over datasets, per seed, for the seeds every dataset has (others listed)
        common = sorted(set.intersection(*(set(s) for s in seeds.values()))) if len(seeds) == len(datasets) else []
        averages = [mean([seeds[d][seed] for d in datasets]) for seed in common]
        missing = {d: sorted(set().union(*(set(s) for s in seeds.values())) - set(seeds.get(d, {}))) for d in datasets}
        table[row] = {
            "datasets": per,
            "average": mean_std(averages),
            "missing_seeds": {d: m for d, m in missing.items() if m},
        }
    return table


def out_of_distribution(grid, spec: ExperimentSpec) -> dict[str, Any]:
    """The paper's Table 3: train on each set, test on every other; averages within subject
    groups (train and test in the same group), across groups, and over all off-diagonal cells."""
    names = list(spec.datasets)
    group = {n: spec.datasets[n].group for n in names}
    out = {}
    for row, by_train in grid.items():
        matrix = {
            a: {b: mean(list(by_train[a][b].values())) for b in names if by_train.get(a, {}).get(b)}
            for a in names
            if a in by_train
        }
        off = [(a, b) for a in matrix for b in matrix[a] if a != b]
        within = [matrix[a][b] for a, b in off if group[a] and group[a] == group[b]]
        across = [matrix[a][b] for a, b in off if not (group[a] and group[a] == group[b])]
        groups = defaultdict(list)
        for a, b in off:
            if group[a] and group[a] == group[b]:
                groups[group[a]].append(matrix[a][b])
        out[row] = {
            "matrix": matrix,
            "ood_average": mean([matrix[a][b] for a, b in off]),
            "within_group_average": mean(within),
            "across_group_average": mean(across),
            "group_averages": {g: mean(v) for g, v in sorted(groups.items())},
            "in_distribution_average": mean([matrix[a][a] for a in matrix if a in matrix[a]]),
        }
    return out


def mixed_vs_single(grid, datasets: list[str]) -> dict[str, Any]:
    """One model trained on every set together against each set's own model, per test set."""
    out = {}
    for row, by_train in grid.items():
        if MIXED not in by_train:
            continue
        out[row] = {
            d: {
                "mixed": mean_std(list(by_train[MIXED][d].values())),
                "single": mean_std(list(by_train.get(d, {}).get(d, {}).values())),
            }
            for d in datasets
            if by_train[MIXED].get(d)
        }
    return out


def external(cells: list[dict[str, Any]]) -> dict[str, Any]:
    """Per external set and row: accuracy per subset (mean over cells) and RewardBench sections."""
    acc: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for cell in _by(cells, "main") + _by(cells, "mixed"):
        for key, scores in cell["scores"].items():
            if not key.startswith("external/"):
                continue
            for row, head in rows_of(cell):
                c, r = SCORE_KEYS[head]
                if c not in scores:
                    continue
                per_pair = pair_accuracy(scores[c], scores[r])
                subsets = defaultdict(list)
                for sub, a in zip(scores["subsets"], per_pair, strict=True):
                    subsets[sub or "all"].append(a)
                for sub, values in subsets.items():
                    acc[key.removeprefix("external/")][f"{row} [{cell['cell']['train']}]"][sub].append(mean(values))
                acc[key.removeprefix("external/")][f"{row} [{cell['cell']['train']}]"]["(all)"].append(mean(per_pair))
    out = {}
    for name, rows in acc.items():
        out[name] = {}
        for row, subs in rows.items():
            per_subset = {s: mean(v) for s, v in subs.items()}
            out[name][row] = {"subsets": per_subset, "rewardbench": rewardbench_sections(per_subset)}
    return out


def _criterion(scores: dict[str, Any], head: str, idx: list[int], criterion: str) -> float:
    c, r = SCORE_KEYS[head]
    cs, rs = [scores[c][i] for i in idx], [scores[r][i] for i in idx]
    if criterion == "accuracy":
        return mean(pair_accuracy(cs, rs))
    if criterion == "reward":
        return mean(cs)
    if criterion == "margin":
        return mean([a - b for a, b in zip(cs, rs, strict=True)])
    if criterion == "loss":  # minus the mean of -log sigmoid(margin) (BT, or DPO's loss for implicit): higher is better
        return mean([log_sigmoid(a - b) for a, b in zip(cs, rs, strict=True)])
    raise ValueError(criterion)


def log_sigmoid(x: float) -> float:
    return -(max(-x, 0.0) + math.log1p(math.exp(-abs(x))))


def checkpoint_selection(cells: list[dict[str, Any]]) -> dict[str, Any]:
    """Which checkpoint each criterion picks, and the accuracy it gets, without peeking: the
    in-distribution test pairs are halved by a hash of their split group (a built-in mirror couple
    stays on one side), the step is chosen on one half and
    scored on the other, both ways, and the two are averaged. `oracle` picks on the scored half."""
    rows: dict = defaultdict(lambda: defaultdict(list))
    for cell in _by(cells, "main"):
        train = cell["cell"]["train"]
        steps = [h for h in cell["history"] if train in h["scores"]]
        if len(steps) < 2:
            continue
        for row, head in rows_of(cell):
            if SCORE_KEYS[head][0] not in steps[0]["scores"][train]:
                continue
            first = steps[0]["scores"][train]
            n = len(first["subsets"])
            side = first.get("halves") or [i % 2 for i in range(n)]  # a couple's pairs stay on one side
            halves = [[i for i in range(n) if side[i] == 0], [i for i in range(n) if side[i] == 1]]
            if not halves[0] or not halves[1]:
                continue
            for criterion in (*SELECTION, "oracle"):
                got = []
                for pick, score in (halves, halves[::-1]):
                    if criterion == "step":
                        best = steps[-1]
                    else:
                        on = score if criterion == "oracle" else pick
                        crit = "accuracy" if criterion == "oracle" else criterion
                        best = max(
                            steps, key=lambda h, on=on, crit=crit: _criterion(h["scores"][train], head, on, crit)
                        )
                    got.append(_criterion(best["scores"][train], head, score, "accuracy"))
                rows[row][criterion].append(mean(got))
    return {row: {k: mean_std(v) for k, v in crits.items()} for row, crits in rows.items()}


def calibration(cells: list[dict[str, Any]]) -> dict[str, Any]:
    """Expected calibration error of sigmoid(r_w - r_l), per row, over in-distribution test pairs
    of the final models: confidence max(p, 1 - p), correct when p > 0.5, 10 equal-width bins."""
    pooled: dict = defaultdict(list)
    for cell in _by(cells, "main"):
        scores = cell["scores"].get(cell["cell"]["train"])
        if not scores:
            continue
        for row, head in rows_of(cell):
            c, r = SCORE_KEYS[head]
            if c in scores:
                pooled[row] += [a - b for a, b in zip(scores[c], scores[r], strict=True)]
    out = {}
    for row, margins in pooled.items():
        bins: list[list[tuple[float, float]]] = [[] for _ in range(CALIBRATION_BINS)]
        for m in margins:
            p = 1 / (1 + math.exp(-max(min(m, 50), -50)))
            conf = max(p, 1 - p)
            correct = accuracy(p, 0.5)
            bins[min(int((conf - 0.5) * 2 * CALIBRATION_BINS), CALIBRATION_BINS - 1)].append((conf, correct))
        table = [
            {"confidence": mean([x for x, _ in b]), "accuracy": mean([y for _, y in b]), "pairs": len(b)}
            for b in bins
            if b
        ]
        ece = sum(t["pairs"] * abs(t["accuracy"] - t["confidence"]) for t in table) / len(margins)
        out[row] = {"ece": ece, "bins": table, "pairs": len(margins)}
    return out


def alpha_sweep(cells: list[dict[str, Any]], spec: ExperimentSpec) -> dict[str, Any]:
    """Accuracy of both heads against alpha on the sweep dataset (the main hybrid cell included),
    and each swept alpha against the main hybrid cell's, paired by seed and test pair, in
    distribution (the sweep dataset's test split) and out of it (every other test set)."""
    sweep = spec.alpha_sweep
    if sweep is None:
        return {}
    seeds = set(sweep.seeds or spec.seeds)
    by_alpha: dict = defaultdict(lambda: defaultdict(list))
    by_schedule: dict = defaultdict(lambda: defaultdict(list))
    correct: dict = defaultdict(lambda: defaultdict(dict))  # alpha name -> head -> (train, test, seed) -> pairs
    base = None
    for cell in cells:
        info = cell["cell"]
        if info["train"] != sweep.dataset or cell["mode"] != "hybrid" or info["seed"] not in seeds:
            continue
        if info["kind"] == "main" and info["method"] != "hybrid":
            continue
        scores = cell["scores"][sweep.dataset]
        schedule = cell.get("alpha_schedule", "constant")
        name = alpha_name(cell["alpha"])
        if info["kind"] == "main":
            base = name
        for head in HEAD_NAMES:
            if schedule == "constant":
                by_alpha[cell["alpha"]][head].append(head_accuracy(scores, head))
                c, r = SCORE_KEYS[head]
                for test, on in cell["scores"].items():
                    if test in spec.datasets and c in on:
                        correct[name][head][(sweep.dataset, test, info["seed"])] = pair_accuracy(on[c], on[r])
            if schedule != "constant" or info["kind"] == "main":
                by_schedule[f"{schedule} (alpha {name})"][head].append(head_accuracy(scores, head))
    return {
        "dataset": sweep.dataset,
        "alphas": {alpha_name(a): {h: mean_std(v) for h, v in heads.items()} for a, heads in _by_alpha(by_alpha)},
        "schedules": {s: {h: mean_std(v) for h, v in heads.items()} for s, heads in by_schedule.items()},
        "against_main": _against_main(correct, base, sweep.dataset, list(spec.datasets)),
    }


def _against_main(correct: dict, base: str | None, dataset: str, datasets: list[str]) -> dict[str, Any]:
    """Each swept alpha against the main hybrid cell's (`base`), per head, paired by seed: head ->
    {"in_distribution": ..., "out_of_distribution": ...} (where the cells were tested)."""
    out = {}
    for name in correct:
        if base is None or name == base:
            continue
        heads = {}
        for head in HEAD_NAMES:
            result = _in_and_out(correct[name][head], correct[base][head], [dataset], datasets)
            if result:
                heads[head] = result
        out[f"{name} vs {base}"] = heads
    return out


def _by_alpha(by_alpha: dict) -> list:
    """The sweep's alphas in order: the numbers ascending, then the words (auto)."""
    words = sorted(a for a in by_alpha if isinstance(a, str))
    return [(a, by_alpha[a]) for a in sorted(a for a in by_alpha if not isinstance(a, str)) + words]


def best_of_n(
    cells: list[dict[str, Any]], candidates: list[dict[str, Any]], top_k: Sequence[int] = (1, 2, 3)
) -> dict[str, Any]:
    """Each row's Best-of-N picks judged, mean ± std over the row's cells (main and mixed).

    With gold labels (the built-in task): the share of picks the verifier accepts, beside the
    candidates' own rate (a random pick's expectation) and the oracle's (any candidate correct).
    With a judge model's scores: the judge's mean score of the picks, top-k recall against the
    judge's ranking, and win rates between rows, paired by training set and seed."""
    if not candidates:
        return {}
    gold = all("gold" in c for c in candidates)
    judge = [c["judge"] for c in candidates] if all("judge" in c for c in candidates) else None
    if not gold and judge is None:
        return {}
    grouped = groups(candidates)
    rates: dict = defaultdict(list)
    judged: dict = defaultdict(list)
    recall: dict = defaultdict(lambda: defaultdict(list))
    picked_by: dict = defaultdict(dict)  # row -> (train, seed) -> picks
    for cell in _by(cells, "main") + _by(cells, "mixed"):
        for row, head in rows_of(cell):
            scores = cell.get("bon", {}).get(head)
            if not scores:
                continue
            picked = picks(scores, grouped)
            picked_by[row][(cell["cell"]["train"], cell["cell"]["seed"])] = picked
            if gold:
                rates[row].append(mean([float(candidates[i]["gold"]) for i in picked]))
            if judge is not None:
                judged[row].append(mean([judge[i] for i in picked]))
                for k in top_k:
                    recall[row][str(k)].append(topk_recall(picked, judge, grouped, k))
    out: dict[str, Any] = {"prompts": len(grouped), "candidates_per_prompt": len(candidates) / len(grouped)}
    if gold:
        out |= {
            "candidates_correct": mean([float(c["gold"]) for c in candidates]),
            "oracle": mean([float(any(candidates[i]["gold"] for i in g)) for g in grouped]),
            "gold_correct": {row: mean_std(v) for row, v in rates.items()},
        }
    if judge is not None:
        out["judge"] = {
            "candidates_mean": mean(judge),
            "oracle": mean([max(judge[i] for i in g) for g in grouped]),
            "score": {row: mean_std(v) for row, v in judged.items()},
            "top_k_recall": {row: {k: mean_std(v) for k, v in ks.items()} for row, ks in recall.items()},
            "win_rates": _paired_win_rates(picked_by, judge),
        }
    return out


def _paired_win_rates(picked_by: dict[str, dict], judge: list[float]) -> dict[str, Any]:
    """How often row A's pick scores above row B's by the judge (a tie half), per cell pairing
    the two rows by training set and seed; mean ± std over those cells."""
    wins = {}
    rows = list(picked_by)
    for i, a in enumerate(rows):
        for b in rows[i + 1 :]:
            both = sorted(set(picked_by[a]) & set(picked_by[b]))
            if both:
                values = [win_rate(picked_by[a][k], picked_by[b][k], lambda j: judge[j]) for k in both]
                wins[f"{a} vs {b}"] = mean_std(values)
    return wins


def sign_test(wins: int, losses: int) -> float:
    """Two-sided exact binomial p-value of `wins` against `losses` under a fair coin (1 if none)."""
    n = wins + losses
    if n == 0:
        return 1.0
    k = min(wins, losses)
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n)


def _correct(cells: list[dict[str, Any]]) -> tuple[dict, dict[str, str], dict]:
    """row -> (train, test, seed) -> per-pair correctness (main cells), each row's mode, and
    (train, test) -> each test pair's skill (its subset's first part: "arithmetic.add" -> "arithmetic")."""
    out: dict = defaultdict(dict)
    modes, skills = {}, {}
    for cell in _by(cells, "main"):
        for row, head in rows_of(cell):
            c, r = SCORE_KEYS[head]
            modes[row] = cell["mode"]
            for test, scores in cell["scores"].items():
                if c in scores and not test.startswith("external/"):
                    out[row][(cell["cell"]["train"], test, cell["cell"]["seed"])] = pair_accuracy(scores[c], scores[r])
                    skills[(cell["cell"]["train"], test)] = [s.split(".")[0] for s in scores.get("subsets", [])]
    return out, modes, skills


def comparisons(cells: list[dict[str, Any]], spec: ExperimentSpec) -> dict[str, Any]:
    """HaF's rows (hybrid-mode methods, both heads) against every other method, and each HaF row
    against the HaF rows before it (e.g. `hybrid_auto` vs `hybrid`), paired by seed.

    Per seed: the difference of the average accuracy over datasets, in distribution (train set ==
    test set) and out of it (every train != test); its mean ± std over the seeds both rows have
    complete (a seed still missing a cell is left out, and counted), the seeds HaF won, and each
    row's own seed spread; a paired 95 % interval of the mean difference (`ci95`), by a bootstrap
    that resamples both the seeds and the test pairs (the same pairs in every seed and both rows),
    so it holds for other seeds and other test pairs of the same kind. Per test pair, over the
    same seeds: the pairs HaF scored better (right where the other was wrong or tied, or tied
    where it was wrong) and worse, with a sign test's p-value (optimistic: the same test pairs
    recur across seeds). In distribution, the same per skill where the test pairs name one; with
    several training sets, the same again for the cells of each training set alone
    (`per_train_set`: a seed counts there once that set's cells are done)."""
    datasets, trained = list(spec.datasets), spec.train_sets
    correct, modes, skills = _correct(cells)
    haf = [r for r, m in modes.items() if m == "hybrid"]
    others = [r for r, m in modes.items() if m != "hybrid"]
    out: dict[str, Any] = {}
    for i, a in enumerate(haf):
        for b in others + haf[:i]:
            entry = _in_and_out(correct[a], correct[b], trained, datasets, skills)
            if len(trained) > 1:
                per_set = {t: _in_and_out(correct[a], correct[b], [t], datasets) for t in trained}
                entry["per_train_set"] = {t: v for t, v in per_set.items() if v}
            entry = {k: v for k, v in entry.items() if v}
            if entry:
                out[f"{a} vs {b}"] = entry
    return out


def _in_and_out(a: dict, b: dict, trained: list[str], datasets: list[str], skills: dict | None = None) -> dict:
    """The in- and out-of-distribution comparisons of the cells trained on `trained` (and per skill
    in distribution, given the test pairs' skills)."""
    entry = {}
    for where, same in (("in_distribution", True), ("out_of_distribution", False)):
        keys = [k for k in a if k in b and (k[0] == k[1]) == same and k[0] in trained and k[1] in datasets]
        complete = len(trained) if same else len(trained) * (len(datasets) - 1)
        entry[where] = _paired(a, b, keys, complete)
        if same and entry[where] and skills is not None:
            entry["per_skill"] = _per_skill(a, b, keys, complete, skills)
    return {k: v for k, v in entry.items() if v}


def _per_skill(a: dict, b: dict, keys: list, complete: int, skills: dict) -> dict[str, Any]:
    """The in-distribution comparison restricted to each skill's test pairs (several skills only)."""
    names = sorted({s for k in keys for s in skills.get(k[:2], []) if s})
    if len(names) < 2:
        return {}
    out = {}
    for skill in names:
        keep = {k[:2]: [j for j, s in enumerate(skills.get(k[:2], [])) if s == skill] for k in keys}
        sub_a = {k: [a[k][j] for j in keep[k[:2]]] for k in keys if keep[k[:2]]}
        sub_b = {k: [b[k][j] for j in keep[k[:2]]] for k in keys if keep[k[:2]]}
        result = _paired(sub_a, sub_b, list(sub_a), complete)
        if result:
            out[skill] = result
    return out


def _paired(a: dict, b: dict, keys: list[tuple[str, str, int]], complete: int) -> dict[str, Any] | None:
    """One comparison: per-seed averages over `keys` (a seed needs all `complete` of its cells),
    the paired bootstrap interval, and the per-pair sign test over those seeds' pairs."""
    seeds = sorted({k[2] for k in keys})
    kept = [s for s in seeds if sum(k[2] == s for k in keys) == complete]
    keys = [k for k in keys if k[2] in kept and len(a[k]) == len(b[k])]  # same test pairs on both sides
    if not keys:
        return None
    per_seed = {s: [k for k in keys if k[2] == s] for s in kept}
    avg = {s: (mean([mean(a[k]) for k in ks]), mean([mean(b[k]) for k in ks])) for s, ks in per_seed.items()}
    better = sum(x > y for k in keys for x, y in zip(a[k], b[k], strict=True))
    worse = sum(x < y for k in keys for x, y in zip(a[k], b[k], strict=True))
    return {
        "difference": mean_std([x - y for x, y in avg.values()]),
        "ci95": paired_interval(a, b, per_seed),
        "a": mean_std([x for x, _ in avg.values()]),
        "b": mean_std([y for _, y in avg.values()]),
        "seeds_won": sum(x > y for x, y in avg.values()),
        "seeds": len(avg),
        "seeds_incomplete": [s for s in seeds if s not in kept],
        "pairs": sum(len(a[k]) for k in keys),
        "pairs_a_better": better,
        "pairs_b_better": worse,
        "sign_test_p": sign_test(better, worse),
    }


def paired_interval(a: dict, b: dict, per_seed: dict[int, list], level: float = 0.95) -> list[float]:
    """Percentile bootstrap interval of the mean over seeds of the average over sets of the
    per-pair difference a - b. Each resample draws the seeds with replacement and, per set, the
    test pairs with replacement (the same draw for every seed: the pairs are shared). With one
    seed, only the pairs are resampled. Seeded: the same cells give the same interval."""
    seeds = list(per_seed)
    sets = sorted({k[:2] for ks in per_seed.values() for k in ks})
    # per set: a (seeds x pairs) matrix of differences
    diffs = {t: np.array([np.subtract(a[(*t, s)], b[(*t, s)]) for s in seeds], dtype=float) for t in sets}
    rng = np.random.default_rng(0)
    stats = np.empty(BOOTSTRAP)
    for i in range(BOOTSTRAP):
        rows = rng.integers(len(seeds), size=len(seeds)) if len(seeds) > 1 else np.zeros(1, dtype=int)
        per_set = [d[rows][:, rng.integers(d.shape[1], size=d.shape[1])].mean() for d in diffs.values()]
        stats[i] = np.mean(per_set)
    tail = (1 - level) / 2 * 100
    return [round(float(np.percentile(stats, tail)), 6), round(float(np.percentile(stats, 100 - tail)), 6)]


def budgets(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "cell": c["cell"]["id"],
            "train_pairs": c["train_pairs"],
            "steps": c["steps"],
            "seconds": round(c["seconds"], 1),
            "precision": c["precision"],
        }
        for c in cells
    ]


def analyse(
    cells: list[dict[str, Any]], spec: ExperimentSpec, candidates: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    datasets = spec.train_sets  # the in-distribution tables: the sets cells train on
    grid = accuracy_grid(cells)
    return {
        "experiment": spec.name,
        "datasets": {n: {"group": d.group, "data": d.data, "test_only": d.test_only} for n, d in spec.datasets.items()},
        "seeds": spec.seeds,
        "cells_finished": len(cells),
        "in_distribution": in_distribution(grid, datasets),
        "out_of_distribution": out_of_distribution(grid, spec),
        "mixed": mixed_vs_single(grid, datasets),
        "comparisons": comparisons(cells, spec),
        "external": external(cells),
        "checkpoint_selection": checkpoint_selection(cells),
        "calibration": calibration(cells),
        "alpha_sweep": alpha_sweep(cells, spec),
        "best_of_n": best_of_n(cells, candidates or [], (spec.bon or {}).get("top_k", (1, 2, 3))),
        "budgets": budgets(cells),
    }
