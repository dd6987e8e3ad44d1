"""Packed vs prefix-shared training steps (forward + backward) on the embedded SmolLM2, as JSON.

    python benchmarks/prefix_sharing.py --out prefix_sharing.json [--bf16] [--steps 6]

Batches of 8 pairs in file order, the hybrid loss, the main job's freezing (all but the top 10
layers) without the frozen-prefix cache, rows of up to 1024 tokens. The two layouts take turns on
each batch, so a slow stretch of a shared VM hits both; the first round is a warm-up. Also
reports the tokens each layout runs and the largest difference of the losses between them.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from hafrm.config import HafConfig
from hafrm.data.formats import DataOptions
from hafrm.data.io import load_source
from hafrm.data.sources import builtin_pairs
from hafrm.data.tokenize import PairCollator, PairTokenizer, pair_features
from hafrm.modeling.backbone import load_backbone
from hafrm.modeling.hybrid import HybridRewardModel
from hafrm.objectives.haf import HybridObjective

HH = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "hh-helpful-base-test.jsonl.gz"


def step(model, objective, batch, bf16: bool) -> tuple[float, float]:
    """(seconds, loss) of one forward + backward."""
    start = time.perf_counter()
    with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
        out = objective(model, batch)
    out.loss.backward()
    model.zero_grad()
    return time.perf_counter() - start, out.loss.item()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="prefix_sharing.json")
    parser.add_argument("--steps", type=int, default=6, help="timed batches per data set (one more is a warm-up)")
    parser.add_argument("--bf16", action="store_true", help="the steps under bf16 autocast, as training runs them")
    args = parser.parse_args()
    torch.manual_seed(0)
    backbone = load_backbone("smollm2")
    model = HybridRewardModel(backbone.model)
    model.freeze_bottom(-10)
    model.train()
    pad = backbone.tokenizer.pad_token_id
    encoder = PairTokenizer(backbone.tokenizer, 512, 256)
    n = 8 * (args.steps + 1)
    sets = {"builtin": builtin_pairs(HafConfig())[:n]}
    if HH.is_file():
        sets["hh_helpful"] = load_source(str(HH), DataOptions(on_error="skip", max_pairs=n))[0]
    objective = HybridObjective(HafConfig())
    layouts = {
        "packed": PairCollator(pad, pack_length=1024),
        "prefix_shared": PairCollator(pad, pack_length=1024, prefix_sharing=True),
    }
    report: dict = {"precision": "bf16 autocast" if args.bf16 else "fp32", "pairs_per_step": 8}
    for name, pairs in sets.items():
        toks = encoder.tokenize(pairs).pairs
        features = pair_features(toks, torch.zeros(len(toks), 2) - 30.0)
        batches = [features[i : i + 8] for i in range(0, len(features), 8)]
        seconds = {k: [] for k in layouts}
        losses = {k: [] for k in layouts}
        for i, b in enumerate(batches):
            order = list(layouts) if i % 2 == 0 else list(layouts)[::-1]
            for how in order:
                s, loss = step(model, objective, layouts[how](b), args.bf16)
                seconds[how].append(s)
                losses[how].append(loss)
        row = {}
        for how, collate in layouts.items():
            row[how] = {
                "seconds_per_step": sum(seconds[how][1:]) / len(seconds[how][1:]),
                "row_tokens": sum(int(collate(b)["input_ids"].numel()) for b in batches),
            }
        row["real_tokens_unshared"] = sum(len(f["chosen_ids"]) + len(f["rejected_ids"]) for f in features)
        row["speedup"] = row["packed"]["seconds_per_step"] / row["prefix_shared"]["seconds_per_step"]
        pairs_of_losses = zip(losses["packed"], losses["prefix_shared"], strict=True)
        row["max_loss_difference"] = max(abs(a - b) for a, b in pairs_of_losses)
        report[name] = row
        print(name, json.dumps(row), flush=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
