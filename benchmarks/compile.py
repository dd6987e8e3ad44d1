"""Does `torch.compile` pay here? Eager vs compiled decoder on packed training steps, as JSON.

    python benchmarks/compile.py --out compile.json

The default recipe (hybrid loss, bottom 6 layers frozen) on the embedded SmolLM2, 12 steps of 8
built-in pairs packed into rows of 1024 tokens. Each way runs in its own subprocess; the first
step (compilation included) is reported apart from the mean of the steps after the third.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

WAYS = ("eager", "compiled")


def run_way(way: str, steps: int) -> dict:
    import torch

    from hafrm.apps.bench import step_times
    from hafrm.config import HafConfig
    from hafrm.data.sources import builtin_pairs
    from hafrm.data.tokenize import PairCollator, PairTokenizer, pair_features
    from hafrm.modeling.backbone import load_backbone
    from hafrm.modeling.hybrid import HybridRewardModel
    from hafrm.objectives.haf import HybridObjective

    torch.manual_seed(0)
    backbone = load_backbone("smollm2")
    tokenizer = backbone.tokenizer
    model = HybridRewardModel(backbone.model)
    model.freeze_bottom(6)
    model.train()
    toks = PairTokenizer(tokenizer, 512, 256).tokenize(builtin_pairs(HafConfig())[: 8 * steps]).pairs
    features = pair_features(toks, torch.zeros(len(toks), 2) - 30.0)
    collate = PairCollator(tokenizer.pad_token_id, pack_length=1024)
    objective = HybridObjective(HafConfig())
    if way == "compiled":
        model.decoder().compile(dynamic=True)  # packed rows vary in length: one dynamic graph
    times = step_times(model, objective, [collate(features[i : i + 8]) for i in range(0, len(features), 8)])
    return {"first_step_seconds": times[0], "seconds_per_step": sum(times[3:]) / len(times[3:]), "steps": len(times)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="compile.json")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--way", choices=WAYS, help=argparse.SUPPRESS)  # worker mode
    args = parser.parse_args()
    if args.way:
        print(json.dumps(run_way(args.way, args.steps)))
        return
    report = {}
    for way in WAYS:
        cmd = [sys.executable, __file__, "--way", way, "--steps", str(args.steps)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        report[way] = json.loads(out.strip().splitlines()[-1])
        print(way, report[way], flush=True)
    report["ratio/compiled_vs_eager_step_time"] = (
        report["compiled"]["seconds_per_step"] / report["eager"]["seconds_per_step"]
    )
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
