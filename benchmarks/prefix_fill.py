"""The frozen-prefix fill in fp32 and under bf16 autocast, on the main job's training split, as JSON.

    python benchmarks/prefix_fill.py --out prefix_fill.json

A run with frozen layers computes their output once per data set (hafrm.modeling.prefix.fill). The eval
sets' states are computed in fp32 (evaluation runs in fp32); with bf16 training steps the
training set's are computed under the steps' bf16 autocast. This times both on the sequences of
the main job's training split (the defaults: the built-in task, the embedded SmolLM2, the
bottom 20 of its 30 layers frozen), best of `--repeats`, and reports how far the two differ.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from hafrm.config import HafConfig
from hafrm.data.tokenize import PairTokenizer
from hafrm.modeling.backbone import load_backbone
from hafrm.modeling.hybrid import HybridRewardModel
from hafrm.modeling.prefix import PrefixCache, _compute_set
from hafrm.training.recipe import load_data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("prefix_fill.json"))
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    cfg = HafConfig()
    backbone = load_backbone(cfg.model, cfg.cache_dir)
    tokenizer = backbone.tokenizer
    model = HybridRewardModel(backbone.model).eval()
    frozen = model.freeze_bottom(cfg.freeze_layers)
    train_pairs = load_data(cfg).train_pairs
    tok = PairTokenizer(tokenizer, cfg.max_length, cfg.max_prompt_length, cfg.system_prompt).tokenize(train_pairs)
    seqs = list(dict.fromkeys(tuple(s) for p in tok.pairs for s in (p.chosen_ids, p.rejected_ids)))
    result = {"frozen_layers": frozen, "sequences": len(seqs), "tokens": sum(map(len, seqs)),
              "threads": torch.get_num_threads(), "pack_length": cfg.pack_length}  # fmt: skip
    states = {}
    for name, bf16 in [("fp32", False), ("bf16_autocast", True)]:
        times = []
        for _ in range(args.repeats):
            cache = PrefixCache(frozen)
            start = time.perf_counter()
            with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
                states[name] = _compute_set(model, cache, seqs, tokenizer.pad_token_id, cfg.pack_length)[0]
            times.append(time.perf_counter() - start)
        result[f"{name}_seconds"] = round(min(times), 1)
    diff = states["fp32"] - states["bf16_autocast"]
    result["speedup"] = round(result["fp32_seconds"] / result["bf16_autocast_seconds"], 2)
    result["relative_rms_difference"] = float(diff.pow(2).mean().sqrt() / states["fp32"].pow(2).mean().sqrt())
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
