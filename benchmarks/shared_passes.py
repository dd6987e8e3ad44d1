"""The frozen-prefix fill and the reference pass, each sequence whole vs prefix-shared, as JSON.

    python benchmarks/shared_passes.py --out shared_passes.json [--bf16] [--pairs 384] [--repeats 2] [--pack-length N]

On the main job's training split (the built-in task, the embedded SmolLM2, the bottom 20 of its
30 layers frozen, rows of up to `--pack-length` tokens, 1024), best of `--repeats`, the two layouts taking turns:

- fill: the bottom layers' states of every sequence (`hafrm.modeling.prefix`), computed in
  whole-sequence units or in prefix-shared ones, and the memory the cache then holds;
- reference: the reference log-probs of every pair (`hafrm.training.reference.compute_logps`)
  packed or prefix-shared, the top layers fed from that filled cache, as a training run computes
  them (and, with `--full`, also the whole model without the cache).

Also reports how far the two layouts' states and log-probs differ. `--bf16` runs both passes
under bf16 autocast, as the training side does with bf16 steps.
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
from hafrm.modeling.prefix import PrefixCache, _compute_set, _store, fill_units
from hafrm.training.recipe import load_data
from hafrm.training.reference import compute_logps

LAYOUTS = {"whole": False, "prefix_shared": True}


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("shared_passes.json"))
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--pairs", type=int, default=0, help="the first N training pairs (0: all)")
    ap.add_argument("--bf16", action="store_true", help="both passes under bf16 autocast")
    ap.add_argument("--full", action="store_true", help="also the reference pass without the cache")
    ap.add_argument("--pack-length", type=int, default=HafConfig().pack_length, help="tokens per packed row")
    args = ap.parse_args()
    cfg = HafConfig(pack_length=args.pack_length)
    backbone = load_backbone(cfg.model, cfg.cache_dir)
    tokenizer, pad = backbone.tokenizer, backbone.tokenizer.pad_token_id
    model = HybridRewardModel(backbone.model).eval()
    frozen = model.freeze_bottom(cfg.freeze_layers)
    train_pairs = load_data(cfg).train_pairs
    pairs = PairTokenizer(tokenizer, cfg.max_length, cfg.max_prompt_length, cfg.system_prompt).tokenize(train_pairs)
    pairs = pairs.pairs[: args.pairs or None]
    hidden = model.config.hidden_size
    report: dict = {
        "precision": "bf16 autocast" if args.bf16 else "fp32", "pairs": len(pairs), "frozen_layers": frozen,
        "threads": torch.get_num_threads(), "pack_length": cfg.pack_length, "repeats": args.repeats,
    }  # fmt: skip
    seconds: dict[str, list[float]] = {}
    caches: dict[str, PrefixCache] = {}
    logps: dict[str, torch.Tensor] = {}
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=args.bf16):
        for r in range(args.repeats):
            order = list(LAYOUTS) if r % 2 == 0 else list(LAYOUTS)[::-1]
            for name in order:  # the fill
                units = fill_units(pairs, LAYOUTS[name])
                s, states = timed(lambda units=units: _compute_set(model, frozen, units, pad, cfg.pack_length))
                seconds.setdefault(f"fill/{name}", []).append(s)
                cache = PrefixCache(frozen, max_bytes=2**40)
                for unit, st in zip(units, states, strict=True):
                    _store(cache, unit, st)
                caches[name] = cache
                report[f"fill/{name}/units"] = len(units)
                report[f"fill/{name}/tokens"] = sum(u.tokens for u in units)
            for name in order:  # the reference pass, through the cache filled in the same layout
                model.attach_prefix_cache(caches[name])
                run = lambda shared=LAYOUTS[name]: compute_logps(model, pairs, pad, 16, cfg.pack_length, shared)  # noqa: E731
                s, logps[name] = timed(run)
                seconds.setdefault(f"reference/{name}", []).append(s)
                model.detach_prefix_cache()
                if args.full:
                    s, logps[f"{name}_full"] = timed(run)
                    seconds.setdefault(f"reference_full/{name}", []).append(s)
    for key, values in seconds.items():
        report[f"{key}/seconds"] = round(min(values), 2)
    for what in ("fill", "reference", "reference_full"):
        if f"{what}/whole/seconds" in report:
            whole, shared = report[f"{what}/whole/seconds"], report[f"{what}/prefix_shared/seconds"]
            report[f"{what}/speedup"] = round(whole / shared, 2)
    for name, cache in caches.items():
        report[f"fill/{name}/cache_mib"] = round(cache.bytes / 2**20, 1)
    report["fill/cache_memory_ratio"] = round(caches["prefix_shared"].bytes / caches["whole"].bytes, 3)
    seqs = [s for p in pairs for s in (p.chosen_ids, p.rejected_ids)]
    report["fill/largest_state_difference"] = max(
        float((caches["whole"].get(torch.tensor(s)) - caches["prefix_shared"].get(torch.tensor(s))).abs().max())
        for s in seqs
    )
    report["fill/largest_state"] = max(float(caches["whole"].get(torch.tensor(s)).abs().max()) for s in seqs)
    report["reference/largest_logp_difference"] = float((logps["whole"] - logps["prefix_shared"]).abs().max())
    report["hidden"] = hidden
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
