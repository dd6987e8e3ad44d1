"""Padded vs packed training steps (forward + backward) on the embedded SmolLM2, as JSON.

    python benchmarks/packing.py --out packing.json

Batches of 8 pairs in file order (no length grouping), the recipe of the README's figures (hybrid loss, bottom 6
layers frozen), on the built-in task and on HH helpful from ../shared/data when it is there. Rows
are packed up to 1024 tokens ("packed1k") or all into one row ("packed_one_row").
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

HH = Path("../shared/data/hh-helpful-base-test.jsonl.gz")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="packing.json")
    parser.add_argument("--steps", type=int, default=4, help="timed steps (one more is a warm-up)")
    args = parser.parse_args()
    torch.manual_seed(0)
    backbone = load_backbone("smollm2")
    tokenizer = backbone.tokenizer
    model = HybridRewardModel(backbone.model)
    model.freeze_bottom(6)  # the recipe the README's figures were measured with (the default was 6 then)
    model.train()
    encoder = PairTokenizer(tokenizer, 512, 256)
    n = 8 * (args.steps + 1)
    sets = {"builtin": builtin_pairs(HafConfig())[:n]}
    if HH.is_file():
        sets["hh_helpful"] = load_source(str(HH), DataOptions(on_error="skip", max_pairs=n))[0]
    objective = HybridObjective(HafConfig())
    collators = {
        "padded": PairCollator(tokenizer.pad_token_id),
        "packed1k": PairCollator(tokenizer.pad_token_id, pack_length=1024),
        "packed_one_row": PairCollator(tokenizer.pad_token_id, pack_length=10**6),
    }
    report = {}
    for name, pairs in sets.items():
        toks = encoder.tokenize(pairs).pairs
        features = pair_features(toks, torch.zeros(len(toks), 2) - 30.0)
        batches = [features[i : i + 8] for i in range(0, len(features), 8)]
        for how, collate in collators.items():
            times = step_times(model, objective, [collate(b) for b in batches])
            report[f"{name}/{how}"] = {
                "seconds_per_step": sum(times[1:]) / len(times[1:]),
                "real_tokens": sum(len(f["chosen_ids"]) + len(f["rejected_ids"]) for f in features),
                "row_tokens": sum(collate(b)["input_ids"].numel() for b in batches),
            }
            print(name, how, report[f"{name}/{how}"], flush=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
