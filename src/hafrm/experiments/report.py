"""The experiment report: matplotlib PNGs and one static HTML file (images inlined) that opens
without a server. Everything shown comes from results.json and the finished cells."""

from __future__ import annotations

import base64
import html
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from hafrm.experiments.analysis import SELECTION, rows_of  # noqa: E402
from hafrm.fileio import write_text_atomic
from hafrm.heads import HEAD_NAMES, SCORE_KEYS  # noqa: E402


def _interval(ci: list[float]) -> str:
    return f"[{ci[0]:+.3f}, {ci[1]:+.3f}]"


WHERE = {"in_distribution": "in distribution", "out_of_distribution": "out of distribution"}


def _comparison_rows(entry: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(where, comparison) rows of one "a vs b" entry: in and out of distribution, then per skill,
    then per training set."""
    rows = [(label, entry[where]) for where, label in WHERE.items() if where in entry]
    rows += [(f"in distribution, {skill}", v) for skill, v in entry.get("per_skill", {}).items()]
    for train, per in entry.get("per_train_set", {}).items():
        rows += [(f"{label}, trained on {train}", per[where]) for where, label in WHERE.items() if where in per]
    return rows


def _stat(v: dict[str, Any] | float | None, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, dict):
        if v.get("n", 0) == 0 or math.isnan(v["mean"]):
            return "–"
        return f"{v['mean']:.{digits}f} ± {v['std']:.{digits}f}" if v["n"] > 1 else f"{v['mean']:.{digits}f}"
    return "–" if math.isnan(v) else f"{v:.{digits}f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


# figures ------------------------------------------------------------------------------------
def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def fig_in_distribution(results: dict[str, Any], out: Path) -> Path | None:
    table = results["in_distribution"]
    if not table:
        return None
    rows = list(table)
    datasets = sorted({d for r in rows for d in table[r]["datasets"]}) + ["average"]
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(datasets) * max(1, len(rows)) / 2), 4))
    width = 0.8 / len(rows)
    for i, row in enumerate(rows):
        vals = [table[row]["datasets"].get(d) if d != "average" else table[row]["average"] for d in datasets]
        means = [v["mean"] if v else float("nan") for v in vals]
        stds = [v["std"] if v else 0 for v in vals]
        ax.bar([j + i * width for j in range(len(datasets))], means, width, yerr=stds, label=row, capsize=2)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(datasets))], datasets, rotation=20)
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_ylabel("pairwise accuracy (test split)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.set_title("In distribution: mean ± std over seeds")
    return _save(fig, out / "in_distribution.png")


def fig_comparisons(results: dict[str, Any], out: Path) -> Path | None:
    """Each comparison's paired difference (the first row minus the second), one point per table
    row with its 95 % interval, and a line at zero: green where the interval is above it, red
    below, grey where it crosses it."""
    rows = [(pair, f"{pair}: {where}", v)
            for pair, entry in (results.get("comparisons") or {}).items()
            for where, v in _comparison_rows(entry)]  # fmt: skip
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(7, 0.9 + 0.28 * len(rows)))
    for i, (pair, _, v) in enumerate(rows):
        d, (lo, hi) = v["difference"]["mean"], v["ci95"]
        color = "tab:green" if lo > 0 else "tab:red" if hi < 0 else "tab:grey"
        ax.errorbar(d, i, xerr=[[d - lo], [hi - d]], fmt="o", color=color, capsize=3, ms=4)
        if i and pair != rows[i - 1][0]:  # a line between two comparisons
            ax.axhline(i - 0.5, color="#ddd", lw=0.8)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_yticks(range(len(rows)), [label for _, label, _ in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("accuracy difference (first minus second), paired 95 % interval", fontsize=8)
    ax.set_title("HaF against the other methods, paired by seed", fontsize=9)
    return _save(fig, out / "comparisons.png")


def _trained(results: dict[str, Any]) -> list[str]:
    """The datasets cells trained on (not `test_only`), in the experiment's order."""
    return [n for n, d in results["datasets"].items() if not d.get("test_only")]


def fig_ood(results: dict[str, Any], out: Path) -> Path | None:
    ood = {r: v for r, v in results["out_of_distribution"].items() if len(v["matrix"]) > 1}
    if not ood:
        return None
    names, trained = list(results["datasets"]), _trained(results)
    fig, axes = plt.subplots(1, len(ood), figsize=(3.3 * len(ood) + 1, 3.6), squeeze=False, constrained_layout=True)
    for ax, (row, v) in zip(axes[0], ood.items(), strict=True):
        m = [[v["matrix"].get(a, {}).get(b, float("nan")) for b in names] for a in trained]
        im = ax.imshow(m, vmin=0.3, vmax=1.0, cmap="viridis")
        for i, line in enumerate(m):
            for j, x in enumerate(line):
                if not math.isnan(x):
                    ax.text(j, i, f"{x:.2f}", ha="center", va="center", fontsize=7, color="w" if x < 0.7 else "k")
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(len(trained)), trained if ax is axes[0][0] else [""] * len(trained), fontsize=7)
        ax.set_title(row, fontsize=9)
        ax.set_xlabel("tested on", fontsize=8)
    axes[0][0].set_ylabel("trained on", fontsize=8)
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8)
    fig.savefig(out / "ood_heatmap.png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return out / "ood_heatmap.png"


def fig_curves(cells: list[dict[str, Any]], out: Path) -> Path | None:
    curves: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for c in cells:
        if c["cell"]["kind"] == "main":
            for row in c["train_logs"]:
                key = "loss/policy" if c["mode"] == "dpo" else "loss/bt"  # the loss of the head it is scored by
                curves[c["cell"]["train"]][c["cell"]["method"]][row["step"]].append(row.get(key, row["loss"]))
    if not curves:
        return None
    fig, axes = plt.subplots(1, len(curves), figsize=(3.6 * len(curves), 3), squeeze=False)
    for ax, (ds, methods) in zip(axes[0], sorted(curves.items()), strict=True):
        for method, by_step in methods.items():
            steps = sorted(by_step)
            ax.plot(steps, [sum(by_step[s]) / len(by_step[s]) for s in steps], label=method)
        ax.set_title(ds, fontsize=9)
        ax.set_xlabel("step")
    axes[0][0].set_ylabel("training loss: BT (dpo: its policy loss)")
    axes[0][0].legend(fontsize=7)
    return _save(fig, out / "training_curves.png")


def fig_histograms(cells: list[dict[str, Any]], out: Path) -> Path | None:
    pooled: dict = defaultdict(lambda: ([], []))
    for c in cells:
        scores = c["scores"].get(c["cell"]["train"]) if c["cell"]["kind"] == "main" else None
        for row, head in rows_of(c) if scores else []:
            k_c, k_r = SCORE_KEYS[head]
            if k_c in scores:
                pooled[row][0].extend(scores[k_c])
                pooled[row][1].extend(scores[k_r])
    if not pooled:
        return None
    fig, axes = plt.subplots(1, len(pooled), figsize=(3.4 * len(pooled), 2.8), squeeze=False)
    for ax, (row, (ch, rj)) in zip(axes[0], pooled.items(), strict=True):
        lo, hi = min(ch + rj), max(ch + rj)
        bins = [lo + (hi - lo) * i / 30 for i in range(31)] if hi > lo else 10
        ax.hist(ch, bins=bins, alpha=0.6, label="chosen")
        ax.hist(rj, bins=bins, alpha=0.6, label="rejected")
        ax.set_title(row, fontsize=9)
    axes[0][0].legend(fontsize=7)
    return _save(fig, out / "reward_histograms.png")


def fig_calibration(results: dict[str, Any], out: Path) -> Path | None:
    cal = results["calibration"]
    if not cal:
        return None
    fig, ax = plt.subplots(figsize=(4.2, 4))
    ax.plot([0.5, 1], [0.5, 1], color="grey", ls="--", lw=0.8)
    for row, v in cal.items():
        ax.plot([b["confidence"] for b in v["bins"]], [b["accuracy"] for b in v["bins"]], marker="o", ms=3,
                label=f"{row} (ECE {v['ece']:.3f})")  # fmt: skip
    ax.set_xlabel("confidence max(p, 1-p), p = sigmoid(r_w - r_l)")
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=7)
    ax.set_title("Reliability (in-distribution test pairs)", fontsize=9)
    return _save(fig, out / "calibration.png")


def fig_selection(results: dict[str, Any], out: Path) -> Path | None:
    sel = results["checkpoint_selection"]
    if not sel:
        return None
    crits = [*SELECTION, "oracle"]
    fig, ax = plt.subplots(figsize=(7, 3.4))
    width = 0.8 / len(sel)
    for i, (row, v) in enumerate(sel.items()):
        means = [v[c]["mean"] if c in v else float("nan") for c in crits]
        ax.bar([j + i * width for j in range(len(crits))], means, width, label=row)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(crits))], crits)
    lows = [v[c]["mean"] for v in sel.values() for c in crits if c in v and not math.isnan(v[c]["mean"])]
    ax.set_ylim(max(0.0, min(lows) - 0.05) if lows else 0, 1)
    ax.set_ylabel("accuracy of the picked checkpoint")
    ax.legend(fontsize=7)
    ax.set_title("Checkpoint selection (picked on one half of the test split, scored on the other)", fontsize=9)
    return _save(fig, out / "checkpoint_selection.png")


def fig_bon(results: dict[str, Any], out: Path) -> Path | None:
    """Each method's picks: the gold verifier's rate, or (without gold) the judge model's score."""
    bon = results.get("best_of_n") or {}
    if bon.get("gold_correct"):
        values, random_pick, best = bon["gold_correct"], bon["candidates_correct"], bon["oracle"]
        ylabel, best_label = "picks correct (gold verifier)", "oracle"
    elif bon.get("judge"):
        j = bon["judge"]
        values, random_pick, best = j["score"], j["candidates_mean"], j["oracle"]
        ylabel, best_label = "judge score of the pick", "the judge's pick"
    else:
        return None
    rows = list(values)
    fig, ax = plt.subplots(figsize=(1.2 * len(rows) + 2, 3.2))
    ax.bar(rows, [values[r]["mean"] for r in rows], yerr=[values[r]["std"] for r in rows], capsize=3)
    ax.axhline(random_pick, color="grey", ls="--", lw=0.8, label="random pick")
    ax.axhline(best, color="black", ls=":", lw=0.8, label=best_label)
    if bon.get("gold_correct"):
        ax.set_ylim(0, 1)
    ax.set_ylabel(ylabel)
    ax.tick_params(axis="x", labelsize=8, rotation=15)
    ax.legend(fontsize=7)
    ax.set_title(f"Best-of-{bon['candidates_per_prompt']:g}", fontsize=9)
    return _save(fig, out / "best_of_n.png")


def fig_alpha(results: dict[str, Any], out: Path) -> Path | None:
    sweep = results["alpha_sweep"]
    if not sweep or not sweep["alphas"]:
        return None
    alphas = list(sweep["alphas"])
    fig, ax = plt.subplots(figsize=(4.6, 3.2))
    for head in HEAD_NAMES:
        vals = [sweep["alphas"][a].get(head) for a in alphas]
        ax.errorbar(range(len(alphas)), [v["mean"] for v in vals], yerr=[v["std"] for v in vals], marker="o",
                    capsize=3, label=f"{head} head")  # fmt: skip
    ax.set_xticks(range(len(alphas)), alphas)
    ax.set_xlabel("alpha (policy-loss weight)")
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=8)
    ax.set_title(f"alpha sweep on {sweep['dataset']}", fontsize=9)
    return _save(fig, out / "alpha_sweep.png")


# html ---------------------------------------------------------------------------------------
def _img(path: Path | None) -> str:
    if path is None:
        return ""
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<p><img alt="{path.stem}" src="data:image/png;base64,{data}"></p>'


Table = tuple[str, list[str], list[list[str]]]  # title ("" = under the previous one), header, rows


def _bon_tables(bon: dict[str, Any]) -> list[Table]:
    out: list[Table] = []
    if "gold_correct" in bon:
        rows = [[r, _stat(v)] for r, v in bon["gold_correct"].items()]
        rows += [["(a random pick: the candidates' rate)", _stat(bon["candidates_correct"])],
                 ["(oracle: any candidate correct)", _stat(bon["oracle"])]]  # fmt: skip
        title = f"Best-of-{bon['candidates_per_prompt']:g} on {bon['prompts']} held-out prompts (gold verifier)"
        out.append((title, ["method", "picks correct"], rows))
    if "judge" in bon:
        j = bon["judge"]
        ks = sorted({k for v in j["top_k_recall"].values() for k in v})
        rows = [[r, _stat(v), *[_stat(j["top_k_recall"].get(r, {}).get(k)) for k in ks]] for r, v in j["score"].items()]
        rows += [["(a random pick: the candidates' mean)", _stat(j["candidates_mean"]), *["–"] * len(ks)],
                 ["(oracle: the judge's own pick)", _stat(j["oracle"]), *["–"] * len(ks)]]  # fmt: skip
        title = f"Best-of-{bon['candidates_per_prompt']:g} on {bon['prompts']} held-out prompts (judge model)"
        out.append((title, ["method", "judge score of the pick", *[f"top-{k} recall" for k in ks]], rows))
        if j["win_rates"]:
            rows = [[pair, _stat(v)] for pair, v in j["win_rates"].items()]
            out.append(("", ["A vs B (same training set and seed)", "A's pick wins by the judge"], rows))
    return out


def tables(results: dict[str, Any]) -> list[Table]:
    """Every table of the report, format-neutral (rendered to HTML and to Markdown)."""
    out: list[Table] = []
    ind = results["in_distribution"]
    if ind:
        datasets = _trained(results)
        rows = [[r, *[_stat(v["datasets"].get(d)) for d in datasets], _stat(v["average"])] for r, v in ind.items()]
        out.append(("In distribution (Table 2)", ["method", *datasets, "average"], rows))
    ood = {r: v for r, v in results["out_of_distribution"].items() if len(v["matrix"]) > 1}
    if ood:
        groups = sorted({g for v in ood.values() for g in v["group_averages"]})
        header = ["method", "in-dist avg", "OOD avg", "within group", "across groups", *[f"OOD {g}" for g in groups]]
        rows = [
            [r, _stat(v["in_distribution_average"]), _stat(v["ood_average"]), _stat(v["within_group_average"]),
             _stat(v["across_group_average"]), *[_stat(v["group_averages"].get(g)) for g in groups]]
            for r, v in ood.items()
        ]  # fmt: skip
        out.append(("Out of distribution (Table 3)", header, rows))
    if results.get("comparisons"):
        rows = [
            [pair, where, _stat(v["a"]), _stat(v["b"]), _stat(v["difference"]),
             _interval(v["ci95"]), f"{v['seeds_won']}/{v['seeds']}",
             f"{v['pairs_a_better']} / {v['pairs_b_better']}", f"{v['sign_test_p']:.3g}"]
            for pair, entry in results["comparisons"].items()
            for where, v in _comparison_rows(entry)
        ]  # fmt: skip
        header = ["HaF vs", "where", "HaF", "other", "difference", "paired 95 % interval", "seeds won",
                  "test pairs HaF / other scored better", "sign test p"]  # fmt: skip
        out.append(("HaF against the other methods, paired by seed", header, rows))
    if results["mixed"]:
        rows = [
            [r, d, _stat(v["mixed"]), _stat(v["single"])] for r, per in results["mixed"].items() for d, v in per.items()
        ]
        out.append(("Mixed data vs one model per set", ["method", "test set", "mixed", "single"], rows))
    for name, per_row in results["external"].items():
        subsets = sorted({s for v in per_row.values() for s in v["subsets"]})
        rows = [[r, *[_stat(v["subsets"].get(s)) for s in subsets]] for r, v in per_row.items()]
        out.append((f"External set: {name}", ["model", *subsets], rows))
        rb = {r: v["rewardbench"] for r, v in per_row.items() if v["rewardbench"]}
        if rb:
            secs = list(next(iter(rb.values())))
            out.append(("", ["model", *secs], [[r, *[_stat(v.get(s)) for s in secs]] for r, v in rb.items()]))
    if results["checkpoint_selection"]:
        crits = [*SELECTION, "oracle"]
        rows = [[r, *[_stat(v.get(c)) for c in crits]] for r, v in results["checkpoint_selection"].items()]
        out.append(("Checkpoint selection", ["method", *crits], rows))
    if results["calibration"]:
        rows = [[r, _stat(v["ece"]), str(v["pairs"])] for r, v in results["calibration"].items()]
        out.append(("Calibration", ["method", "ECE", "pairs"], rows))
    if results["alpha_sweep"]:
        sw = results["alpha_sweep"]
        rows = [[a, _stat(v.get("reward")), _stat(v.get("implicit"))] for a, v in sw["alphas"].items()]
        rows += [[s, _stat(v.get("reward")), _stat(v.get("implicit"))] for s, v in sw.get("schedules", {}).items()]
        out.append((f"alpha sweep ({sw['dataset']})", ["alpha", "reward head", "implicit"], rows))
        rows = [
            [pair, head, WHERE[where], _stat(v["difference"]), _interval(v["ci95"]), f"{v['seeds_won']}/{v['seeds']}"]
            for pair, heads in sw.get("against_main", {}).items()
            for head, per in heads.items()
            for where, v in per.items()
        ]
        if rows:
            header = ["alpha vs the main cell's", "head", "where", "difference", "paired 95 % interval", "seeds won"]
            out.append(("", header, rows))
    out += _bon_tables(results.get("best_of_n") or {})
    budget = [[b["cell"], str(b["train_pairs"]), str(b["steps"]), f"{b['seconds']:.0f}"] for b in results["budgets"]]
    out.append(("Budget per cell", ["cell", "train pairs", "steps", "seconds"], budget))
    return out


def markdown(results: dict[str, Any], figures: list[Path]) -> str:
    """The tables and figure links as Markdown (for docs/results.md)."""
    lines = [f"# hafrm experiment: {results['experiment']}", "", f"{results['cells_finished']} cells finished; "
             f"seeds {results['seeds']}.", ""]  # fmt: skip
    for title, header, rows in tables(results):
        if title:
            lines += [f"## {title}", ""]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(r) + " |" for r in rows] + [""]
    lines += [f"![{p.stem}]({p.name})" for p in figures]
    return "\n".join(lines) + "\n"


STYLE = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}
th{background:#f3f3f3}img{max-width:100%}"""


def write_report(results: dict[str, Any], cells: list[dict[str, Any]], out: Path, note: str = "") -> Path:
    """Write the PNGs and report.html into `out`; returns the HTML path."""
    figs = {
        "in_distribution": fig_in_distribution(results, out),
        "ood": fig_ood(results, out),
        "comparisons": fig_comparisons(results, out),
        "curves": fig_curves(cells, out),
        "histograms": fig_histograms(cells, out),
        "calibration": fig_calibration(results, out),
        "selection": fig_selection(results, out),
        "alpha": fig_alpha(results, out),
        "bon": fig_bon(results, out),
    }
    body = [
        f"<h1>hafrm experiment: {html.escape(results['experiment'])}</h1>",
        f"<p>{results['cells_finished']} cells finished; seeds {results['seeds']}. {html.escape(note)}</p>",
    ]
    for title, header, rows in tables(results):
        if title == "Budget per cell":  # the figures before the long budget table
            body += ["<h2>Figures</h2>", *[_img(p) for p in figs.values()]]
        body += ([f"<h2>{html.escape(title)}</h2>"] if title else []) + [_table(header, rows)]
    write_text_atomic(out / "results.md", markdown(results, [p for p in figs.values() if p]))
    path = out / "report.html"
    write_text_atomic(path, f"<!doctype html><meta charset='utf-8'><title>hafrm {html.escape(results['experiment'])}"
                    f"</title><style>{STYLE}</style>" + "\n".join(body) + "\n")  # fmt: skip
    return path
