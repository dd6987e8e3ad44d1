"""fp32 vs bf16-autocast training steps (forward + backward) on the embedded SmolLM2, as JSON.

    python benchmarks/precision.py --out precision.json

What `--precision auto` would pick here (the matmul probe) and what bf16 buys in a training
step: packed batches of 8 pairs, hybrid loss, for the main job's recipe on the built-in task
(bottom 6 layers frozen, 512 tokens) and for `experiments/paper.yaml`'s on HH helpful from
../shared/data when it is there (bottom 20 frozen, 256 tokens), each without the frozen-prefix
cache (the whole forward runs). The step is timed as `hafrm train` runs it, under autocast.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from hafrm.apps.bench import step_times
from hafrm.config import HafConfig
from hafrm.data.formats import DataOptions
from hafrm.data.io import load_source
from hafrm.data.sources import builtin_pairs
from hafrm.data.tokenize import PairCollator, PairTokenizer, pair_features
from hafrm.modeling.backbone import load_backbone
from hafrm.modeling.hybrid import HybridRewardModel
from hafrm.objectives.haf import HybridObjective
from hafrm.training.precision import cpu_matmul_gflops, resolve_precision

HH = Path("../shared/data/hh-helpful-base-test.jsonl.gz")


class _Autocast:
    """Wraps the objective so each step runs under bf16 autocast, as HafTrainer's steps do."""

    def __init__(self, objective: HybridObjective):
        self.objective = objective

    def __call__(self, model, inputs):
        with torch.autocast("cpu", torch.bfloat16):
            return self.objective(model, inputs)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="precision.json")
    parser.add_argument("--steps", type=int, default=3, help="timed steps (one more is a warm-up)")
    args = parser.parse_args()
    torch.manual_seed(0)
    n = 8 * (args.steps + 1)
    recipes = {"builtin_main_job": (6, 512, 256, lambda: builtin_pairs(HafConfig())[:n])}
    if HH.is_file():
        recipes["hh_paper_yaml"] = (20, 256, 160, lambda: load_source(str(HH), DataOptions(on_error="skip",
                                                                                         max_pairs=n))[0])  # fmt: skip
    report = {"matmul_gflops": cpu_matmul_gflops(), "auto_picks": resolve_precision("auto"), "threads":
              torch.get_num_threads()}  # fmt: skip
    objective = HybridObjective(HafConfig())
    for name, (frozen, max_length, max_prompt, read) in recipes.items():
        backbone = load_backbone("smollm2")
        tokenizer = backbone.tokenizer
        model = HybridRewardModel(backbone.model)
        model.freeze_bottom(frozen)
        model.train()
        toks = PairTokenizer(tokenizer, max_length, max_prompt).tokenize(read()).pairs
        features = pair_features(toks, torch.zeros(len(toks), 2) - 30.0)
        collate = PairCollator(tokenizer.pad_token_id, pack_length=1024)
        batches = [collate(features[i : i + 8]) for i in range(0, len(features), 8)]
        row = {"tokens_per_step": sum(b["input_ids"].numel() for b in batches) / len(batches)}
        for precision, objective_fn in (("fp32", objective), ("bf16", _Autocast(objective))):
            times = step_times(model, objective_fn, batches)
            row[f"{precision}_seconds_per_step"] = sum(times[1:]) / len(times[1:])
        row["bf16_speedup"] = row["fp32_seconds_per_step"] / row["bf16_seconds_per_step"]
        report[name] = row
        print(name, row, flush=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
