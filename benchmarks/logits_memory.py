"""Peak memory and time of response log-probs: full logits vs chunked (kept or recomputed), as JSON.

    python benchmarks/logits_memory.py --out logits_memory.json

One training step (forward + backward of the summed response log-probs) on the embedded
SmolLM2 with the default recipe's frozen bottom 6 layers, on a padded batch of 16 sequences
(8 pairs) of `--length` tokens whose last `--response` tokens are the response. Each variant
runs in its own subprocess, so the peak resident memory (ru_maxrss) is its own:

- `full_logits`: the naive way (TRL's, the paper's code): `(2B, T, V)` logits, then log-softmax
  and a gather.
- `chunked_keep`: hafrm's default: only response positions go through the LM head, in chunks
  of 512, and their logits are kept for backward (they fit in `logprob_keep_mib`, 512 MiB).
- `chunked_recompute`: the same chunks recomputed in backward (`logprob_keep_mib` 0), so one
  chunk of logits is alive at a time.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

VARIANTS = ("full_logits", "chunked_keep", "chunked_recompute")


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_variant(variant: str, length: int, response: int, steps: int) -> dict:
    import torch

    from hafrm.modeling.backbone import load_backbone
    from hafrm.modeling.hybrid import HybridRewardModel

    torch.manual_seed(0)
    backbone = load_backbone("smollm2")
    tokenizer = backbone.tokenizer
    model = HybridRewardModel(backbone.model, keep_logits_bytes=0 if variant == "chunked_recompute" else 512 * 2**20)
    model.freeze_bottom(6)
    model.train()
    n = 16
    input_ids = torch.randint(0, len(tokenizer), (n, length))
    attention_mask = torch.ones_like(input_ids)
    response_mask = torch.zeros_like(input_ids)
    response_mask[:, length - response :] = 1

    def step() -> None:
        if variant == "full_logits":
            logits = model.backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
            logps = logits[:, :-1].float().log_softmax(-1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
            loss = (logps * response_mask[:, 1:]).sum()
        else:
            loss = model(input_ids, attention_mask, response_mask=response_mask).logps.sum()
        loss.backward()
        model.zero_grad(set_to_none=True)

    step()  # warm-up: allocator and weights' gradients are in place before measuring
    before = _rss_mib()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = (time.perf_counter() - start) / steps
    return {
        "peak_rss_mib": _rss_mib(),
        "peak_rss_after_warmup_mib": before,
        "seconds_per_step": seconds,
        "tokens": n * length,
        "response_positions": n * (response - 1),
        "vocab": len(tokenizer),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="logits_memory.json")
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--response", type=int, default=128)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)  # worker mode
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args.variant, args.length, args.response, args.steps)))
        return
    report = {"length": args.length, "response": args.response, "sequences": 16}
    for variant in VARIANTS:
        cmd = [sys.executable, __file__, "--variant", variant, "--length", str(args.length)]
        cmd += ["--response", str(args.response), "--steps", str(args.steps)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        report[variant] = json.loads(out.strip().splitlines()[-1])
        print(variant, report[variant], flush=True)
    full = report["full_logits"]["peak_rss_mib"]
    for variant in VARIANTS[1:]:
        report[f"ratio/{variant}_vs_full_peak_rss"] = report[variant]["peak_rss_mib"] / full
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
