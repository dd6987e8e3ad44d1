"""What LoRA costs and saves against full and bottom-frozen training on the main job, as JSON.

    python benchmarks/lora_cost.py --out lora_cost.json [--max-steps 20] [--variants frozen,full,lora]

Each variant is the main job (`hafrm train`: HaF, the built-in task, the embedded SmolLM2) in its
own process (so the peak memory is its own), stopped after --max-steps steps (0: the whole job,
three epochs), evaluated on the held-out split at the end. From each run's metrics.json: the
seconds of the fit per step, the peak RSS, the trainable parameters and the held-out accuracy of
both heads; and the ratios to the frozen run (the default recipe). Compare within one run: the
machines are shared and their speed varies.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VARIANTS = {
    "frozen": [],  # the default: the top 10 layers trained, the rest frozen (cached)
    "full": ["--freeze-layers", "0"],  # every weight trained
    "lora": ["--lora-r", "16", "--lora-alpha", "32"],  # adapters on the top 10 layers, every weight frozen
    "lora_all_layers": ["--freeze-layers", "0", "--lora-r", "16", "--lora-alpha", "32"],  # no frozen-prefix cache
}


def run(name: str, max_steps: int, root: Path) -> dict:
    out = root / name
    cmd = [sys.executable, "-m", "hafrm", "train", "--output-dir", str(out), "--save-only-model", *VARIANTS[name]]
    if max_steps:
        cmd += ["--max-steps", str(max_steps), "--eval-steps", str(max_steps), "--select-by", "step"]
    start = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    m = json.loads((out / "metrics.json").read_text())
    steps = m["train/steps"]
    return {
        "wall_s": time.time() - start,
        "steps": steps,
        "fit_s_per_step": m["train/seconds/fit"] / steps,
        "peak_rss_mib": m["train/peak_rss_mib"],
        "trainable_parameters": m["train/trainable_parameters"],
        "reward_head_accuracy": m["eval/reward_head/accuracy"],
        "implicit_accuracy": m.get("eval/implicit/accuracy"),
        "precision": json.loads((out / "hafrm_config.json").read_text())["precision"],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="lora_cost.json")
    parser.add_argument("--max-steps", type=int, default=20, help="steps per variant (0: the whole main job)")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    args = parser.parse_args()
    report: dict = {"max_steps": args.max_steps or "the main job", "cpu": os.uname().machine, "variants": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.variants.split(","):
            report["variants"][name] = run(name, args.max_steps, Path(tmp))
            print(name, json.dumps(report["variants"][name]), flush=True)
    base = report["variants"].get("frozen", {})
    for r in report["variants"].values():
        if "error" not in r and "error" not in base and base:
            r["step_time_vs_frozen"] = r["fit_s_per_step"] / base["fit_s_per_step"]
            r["peak_rss_vs_frozen"] = r["peak_rss_mib"] / base["peak_rss_mib"]
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
