"""RewardBench's own command against `hafrm eval` on the same pairs, offline, as JSON.

    make rewardbench   # once: .venv-rewardbench with rewardbench==0.1.4
    python benchmarks/rewardbench_agreement.py runs/main --data pairs.jsonl --out rewardbench_agreement.json

`--data` is a local file in RewardBench's format (JSON lines of prompt, chosen, rejected, subset,
id); without it, the model's held-out built-in pairs are written in that format (subset = the
built-in subtype). The model is exported with `hafrm export --to seq-cls`, and RewardBench's
`rewardbench` runs on the export in its own venv through tools/rewardbench_cpu.py, from a work
folder that holds the file where `load_dataset("allenai/reward-bench")` looks first, so nothing
is fetched. hafrm's side is `hafrm eval --format rewardbench` on the model folder. Reported:
both accuracies (RewardBench counts a tie as wrong, hafrm as half right), per subset, RewardBench's
sections, and the largest per-pair score difference.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import hafrm
from hafrm.apps.commands import evaluate_model
from hafrm.apps.export import export_model
from hafrm.data.formats import DataOptions
from hafrm.evaluation.rewardbench import section_metrics

ROOT = Path(__file__).resolve().parents[1]
SHIM = ROOT / "tools" / "rewardbench_cpu.py"


def run_rewardbench(export_dir: Path, data: Path, work: Path, venv: Path, batch_size: int = 8) -> dict:
    """RewardBench's command on `export_dir` and the local file `data`: its summary and per-pair rows."""
    target = work / "allenai" / "reward-bench" / "data"  # what load_dataset("allenai/reward-bench") reads first
    target.mkdir(parents=True, exist_ok=True)
    (target / "filtered-00000-of-00001.jsonl").write_text(Path(data).read_text())
    (work / "model").symlink_to(Path(export_dir).resolve())  # a relative --model keeps its outputs in work/
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env |= {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "WANDB_MODE": "disabled"}
    cmd = [str(venv / "bin" / "python"), str(SHIM), "--model", "model", "--not_quantized", "--torch_dtype",
           "float32", "--batch_size", str(batch_size), "--output_dir", "results/"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise SystemExit(f"rewardbench failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    summary = json.loads((work / "results" / "model.json").read_text())
    rows = [json.loads(line) for line in (work / "results" / "model_outputs.jsonl").read_text().splitlines() if line]
    return {"summary": summary, "rows": rows, "command": " ".join(cmd[1:]), "log_tail": proc.stdout[-1500:]}


def hafrm_side(model_dir: Path, data: Path) -> dict:
    """`hafrm eval --format rewardbench`: metrics and each pair's two reward-head scores."""
    result, dropped = evaluate_model(hafrm.load(model_dir), [str(data)], DataOptions(format="rewardbench"))
    metrics = dict(result.metrics) | section_metrics(result.metrics)
    return {
        "metrics": metrics,
        "dropped": dropped,
        "chosen": result.reward_chosen.tolist(),
        "rejected": result.reward_rejected.tolist(),
        "subsets": result.subsets,
    }


def builtin_rewardbench_file(model_dir: Path, path: Path) -> int:
    """The model's held-out built-in pairs in RewardBench's format (single-turn prompts)."""
    from hafrm.apps.commands import _train_config
    from hafrm.data.io import split_by_prompt
    from hafrm.data.sources import builtin_pairs

    cfg = _train_config(hafrm.load(model_dir))
    held_out = split_by_prompt(builtin_pairs(cfg), cfg.eval_fraction, cfg.seed)[1]
    rows = []
    for p in held_out:
        user = [m["content"] for m in p.prompt if m["role"] == "user"]
        rows.append({"prompt": user[-1], "chosen": p.chosen, "rejected": p.rejected,
                     "subset": p.meta["subset"], "id": len(rows)})  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return len(rows)


def compare(ours: dict, theirs: dict) -> dict:
    rows = theirs["rows"]
    chosen, rejected = ours["chosen"], ours["rejected"]
    out: dict = {
        "pairs": len(rows),
        "hafrm_dropped": ours["dropped"],
        "rewardbench_accuracy": theirs["summary"]["accuracy"],
        "hafrm_accuracy": ours["metrics"]["reward_head/accuracy"],  # a tie counts 0.5
        "hafrm_ties": sum(c == r for c, r in zip(chosen, rejected, strict=True)),
        "rewardbench_per_subset": theirs["summary"].get("extra_results", {}),
        "hafrm_per_subset": {
            k.split("/")[1]: v
            for k, v in ours["metrics"].items()
            if k.startswith("subset/") and k.endswith("/reward_head/accuracy")
        },  # fmt: skip
        "hafrm_sections": {
            k.split("/")[1]: v
            for k, v in ours["metrics"].items()
            if k.startswith("rewardbench/") and k.endswith("/reward_head/accuracy")
        },  # fmt: skip
    }
    if not ours["dropped"] and len(rows) == len(chosen):  # both in file order: compare pair by pair
        strict = [float(c > r) for c, r in zip(chosen, rejected, strict=True)]
        out["hafrm_accuracy_ties_wrong"] = sum(strict) / len(strict)
        out["verdicts_agree"] = sum(int(s) == row["results"] for s, row in zip(strict, rows, strict=True))
        out["max_abs_score_diff"] = max(
            max(abs(c - row["scores_chosen"]), abs(r - row["scores_rejected"]))
            for c, r, row in zip(chosen, rejected, rows, strict=True)
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model_dir", type=Path)
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--venv", type=Path, default=ROOT / ".venv-rewardbench")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--out", type=Path, default=Path("rewardbench_agreement.json"))
    args = ap.parse_args()
    if not (args.venv / "bin" / "python").is_file():
        raise SystemExit(f"{args.venv} is missing: run `make rewardbench`")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = args.data
        if data is None:
            data = tmp / "builtin_rewardbench.jsonl"
            builtin_rewardbench_file(args.model_dir, data)
        export = export_model(args.model_dir, "seq-cls", tmp / "export").out
        theirs = run_rewardbench(export, data, tmp / "work", args.venv, args.batch_size)
        ours = hafrm_side(args.model_dir, data)
    report = {"model_dir": str(args.model_dir), "data": str(args.data or "held-out built-in pairs")}
    report |= compare(ours, theirs) | {"rewardbench_command": theirs["command"]}
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    keys = ("pairs", "rewardbench_accuracy", "hafrm_accuracy", "hafrm_accuracy_ties_wrong", "hafrm_ties",
            "verdicts_agree", "max_abs_score_diff")  # fmt: skip
    for k in keys:
        print(f"{k}: {report.get(k)}")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
