"""The frozen-prefix cache: training steps and evaluation with and without it, as JSON.

    python benchmarks/prefix_cache.py --out prefix_cache.json [--freeze 6,20]

The embedded SmolLM2, hybrid loss, 8 pairs a step packed in rows of 1024 tokens, on HH helpful
from ../shared/data when it is there (else the built-in task), at 256 tokens. For each number of
frozen layers: the seconds of a training step (forward + backward, mean over the timed steps
after one warm-up) and of scoring the same pairs without gradients, with the cache off and on
(states filled once beforehand; that one-off fill is reported apart), and the largest
difference of the rewards and log-probs between the two ways.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from hafrm.apps.bench import step_times
from hafrm.config import HafConfig
from hafrm.data.formats import DataOptions
from hafrm.data.io import load_source
from hafrm.data.sources import builtin_pairs
from hafrm.data.tokenize import PairCollator, PairTokenizer, pair_features
from hafrm.modeling.backbone import load_backbone
from hafrm.modeling.hybrid import HybridRewardModel, model_inputs
from hafrm.modeling.prefix import PrefixCache, fill
from hafrm.objectives.haf import HybridObjective

HH = Path("../shared/data/hh-helpful-base-test.jsonl.gz")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="prefix_cache.json")
    parser.add_argument("--steps", type=int, default=4, help="timed steps (one more is a warm-up)")
    parser.add_argument("--freeze", default="6,20", help="frozen layers, comma-separated")
    args = parser.parse_args()
    torch.manual_seed(0)
    backbone = load_backbone("smollm2")
    tokenizer = backbone.tokenizer
    model = HybridRewardModel(backbone.model)
    torch.nn.init.normal_(model.reward_head.weight, std=0.05)  # not zero, so reward differences show
    n = 8 * (args.steps + 1)
    if HH.is_file():
        data, pairs = "hh_helpful", load_source(str(HH), DataOptions(on_error="skip", max_pairs=n))[0]
    else:
        data, pairs = "builtin", builtin_pairs(HafConfig())[:n]
    toks = PairTokenizer(tokenizer, 256, 160).tokenize(pairs).pairs
    features = pair_features(toks, torch.zeros(len(toks), 2) - 30.0)
    batches = [features[i : i + 8] for i in range(0, len(features), 8)]
    collate = PairCollator(tokenizer.pad_token_id, pack_length=1024)
    objective = HybridObjective(HafConfig())
    sequences = [s for p in toks for s in (p.chosen_ids, p.rejected_ids)]
    report: dict = {"data": data, "pairs": len(toks), "tokens": sum(map(len, sequences)), "frozen": {}}
    for frozen in [int(x) for x in args.freeze.split(",")]:
        for p in model.parameters():
            p.requires_grad_(True)
        model.freeze_bottom(frozen)
        row: dict = {}
        outputs = {}
        for way in ("off", "on"):
            model.detach_prefix_cache()
            if way == "on":
                model.attach_prefix_cache(PrefixCache(frozen))
                start = time.perf_counter()
                fill(model, sequences, Path("/tmp/hafrm-prefix-bench"), f"bench-{time.time()}", tokenizer.pad_token_id)
                row["fill_seconds"] = time.perf_counter() - start
            model.train()
            times = step_times(model, objective, [collate(b) for b in batches])
            row[f"train_step_seconds/{way}"] = sum(times[1:]) / len(times[1:])
            model.eval()
            start = time.perf_counter()
            with torch.no_grad():
                outs = [model(**model_inputs(collate(b))) for b in batches]
            row[f"score_seconds/{way}"] = time.perf_counter() - start
            outputs[way] = outs
        row["speedup/train"] = row["train_step_seconds/off"] / row["train_step_seconds/on"]
        row["speedup/score"] = row["score_seconds/off"] / row["score_seconds/on"]
        row["max_abs_diff/rewards"] = max(
            float((a.rewards - b.rewards).abs().max()) for a, b in zip(outputs["off"], outputs["on"], strict=True)
        )
        row["max_abs_diff/logps"] = max(
            float((a.logps - b.logps).abs().max()) for a, b in zip(outputs["off"], outputs["on"], strict=True)
        )
        report["frozen"][str(frozen)] = row
        print(frozen, json.dumps(row), flush=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
