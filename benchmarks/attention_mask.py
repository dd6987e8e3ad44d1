"""Attention masks for packed and prefix-shared rows on the embedded SmolLM2, as JSON.

    python benchmarks/attention_mask.py --out attention_mask.json [--batches 4] [--hh-batches 3] [--repeats 1] [--bf16]

Batches of 8 pairs in file order (the built-in task, and HH helpful from ../shared/data when it is
there), rows of up to 1024 tokens, the main job's freezing (all but the top 10 layers) without the
frozen-prefix cache. Training steps (forward + backward of the hybrid loss) of:

- packed_block_causal: packed rows, attention_mask None; transformers builds the block-causal
  mask from the restarting position_ids (sdpa);
- packed_dense_mask: the same rows with that mask passed explicitly, (R, 1, L, L) boolean (sdpa);
- shared_dense_mask: prefix-shared rows with their dense boolean mask (sdpa), hafrm's path;
- shared_eager: the same through eager attention, for reference (built-in task only: its (R, 9, L, L)
  scores held for backward would not fit in memory on HH's rows);
- shared_flex: prefix-shared rows through flex_attention with a BlockMask from the segments
  (tried once; torch 2.13 has no flex backward on CPU, and the error is recorded);
- shared_segment_sdpa: an exploration, not in hafrm: sdpa run per segment (is_causal on the prompt
  and chosen, a small mask for the rejected branch against the prompt and itself), so no kernel
  computes the scores that the row's mask throws away.

Then forward passes without gradients (eval mode, as scoring and the reference pass run them) of
the same layouts and shared_flex (flex runs forward only on CPU); the first flex call on each batch
(compilation, cold: inductor's caches start empty; then a recompile for dynamic shapes) is timed
apart from the steady calls, and a contender whose compilation fails is reported with its error.

Contenders take turns on each batch in a rotating order, so a slow stretch of a shared VM hits
them all (with --repeats N, N turns each, the fastest counting); the first batch is a warm-up.
Reports seconds per step, the ratio of the means to packed_block_causal and the median of the
per-batch ratios (the steadier one on a busy machine), and the largest differences of loss,
rewards and log-probs from it.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from statistics import median

import torch
from torch.nn.functional import scaled_dot_product_attention
from torch.profiler import profile
from transformers import AttentionInterface

from hafrm.config import HafConfig
from hafrm.data.formats import DataOptions
from hafrm.data.io import load_source
from hafrm.data.sources import builtin_pairs
from hafrm.data.tokenize import PairCollator, PairTokenizer, pair_features
from hafrm.modeling.attention import shared_block_mask
from hafrm.modeling.backbone import load_backbone
from hafrm.modeling.hybrid import HybridRewardModel, model_inputs
from hafrm.objectives.haf import HybridObjective

HH = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "hh-helpful-base-test.jsonl.gz"
BASELINE = "packed_block_causal"
SEGMENTS: dict[str, torch.Tensor] = {}  # the batch's segments, for shared_segment_sdpa (set per step)


def segment_sdpa(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Attention of prefix-shared rows one segment at a time: (R, H, L, D) in, (R, L, H, D) out."""
    n_rep = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(n_rep, 1), value.repeat_interleave(n_rep, 1)
    R, _, L, _ = query.shape
    pieces: list[list[tuple[int, torch.Tensor]]] = [[] for _ in range(R)]  # per row: (start column, output)
    for r, a, n1, n2, p in SEGMENTS["segments"].tolist():
        q, k, v = query[r : r + 1], key[r : r + 1], value[r : r + 1]
        first = slice(a, a + n1)
        pieces[r].append((a, scaled_dot_product_attention(q[:, :, first], k[:, :, first], v[:, :, first],
                                                          is_causal=True, scale=scaling)))  # fmt: skip
        if n2:  # the rejected branch: the prompt and itself
            second = slice(a + n1, a + n1 + n2)
            k2 = torch.cat([k[:, :, a : a + p], k[:, :, second]], 2)
            v2 = torch.cat([v[:, :, a : a + p], v[:, :, second]], 2)
            mask = torch.ones(n2, p + n2, dtype=torch.bool, device=query.device)
            mask[:, p:] = mask[:, p:].tril()
            pieces[r].append((a + n1, scaled_dot_product_attention(q[:, :, second], k2, v2, attn_mask=mask,
                                                                   scale=scaling)))  # fmt: skip
    rows = []
    for r in range(R):
        parts = [out for _, out in sorted(pieces[r], key=lambda piece: piece[0])]
        end = sum(out.shape[2] for out in parts)
        parts.append(value[r : r + 1, :, end:])  # the padding sees itself only: its own value
        rows.append(torch.cat(parts, 2))
    return torch.cat(rows).transpose(1, 2).contiguous(), None


AttentionInterface.register("segment_sdpa", segment_sdpa)


def explicit_mask(batch: dict) -> dict:
    """A packed batch with the mask transformers would build passed explicitly: the prefix-shared
    batch form (attention (R, L, L) and one log-prob entry per response token), so the model's
    shared path hands it to sdpa as it is."""
    pos = batch["position_ids"]
    block = (torch.diff(pos, prepend=pos[:, :1] - 1) != 1).cumsum(-1)  # (R, L), as transformers finds them
    L = pos.shape[1]
    attention = (block[:, :, None] == block[:, None, :]) & torch.ones(L, L, dtype=torch.bool).tril()
    rows, cols = batch["response_mask"][:, 1:].bool().nonzero(as_tuple=True)  # token cols + 1 predicted at cols
    out = {k: v for k, v in batch.items() if k not in ("response_mask", "segment_ids")}
    out.update(attention=attention, logp_rows=rows, logp_cols=cols, logp_targets=batch["input_ids"][rows, cols + 1],
               logp_seq=batch["segment_ids"][rows, cols + 1])  # fmt: skip
    return out


class Runner:
    """Runs one contender's step on a batch: its attention implementation set on the backbone."""

    def __init__(self, model: HybridRewardModel, objective: HybridObjective, device: str, bf16: bool):
        self.model, self.objective, self.device, self.bf16 = model, objective, device, bf16

    def _timed(self, fn):
        if self.device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast(self.device, torch.bfloat16, enabled=self.bf16):
            result = fn()
        if self.device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start, result

    def train_step(self, implementation: str, batch: dict) -> tuple[float, dict]:
        """(seconds, outputs) of one forward + backward."""
        self.model.backbone.config._attn_implementation = implementation
        SEGMENTS["segments"] = batch.get("segments")
        self.model.train()

        def run():
            out = self.objective(self.model, batch)
            out.loss.backward()
            return out

        seconds, out = self._timed(run)
        self.model.zero_grad()
        s = out.scores
        rewards, logps = torch.cat([s.reward_chosen, s.reward_rejected]), torch.cat([s.logps_chosen, s.logps_rejected])
        return seconds, {"loss": out.loss.detach().reshape(1), "rewards": rewards, "logps": logps}

    @torch.no_grad()
    def forward(self, implementation: str, batch: dict) -> tuple[float, dict]:
        """(seconds, outputs) of one forward without gradients, in eval mode."""
        self.model.backbone.config._attn_implementation = implementation
        SEGMENTS["segments"] = batch.get("segments")
        self.model.eval()
        seconds, out = self._timed(lambda: self.model(**model_inputs(batch)))
        return seconds, {"rewards": out.rewards, "logps": out.logps}


def on(batch: dict, device: str) -> dict:
    return {k: v.to(device) for k, v in batch.items()}


def layouts(pad: int, features: list[dict], device: str) -> dict[str, dict]:
    packed = PairCollator(pad, pack_length=1024)(features)
    shared = PairCollator(pad, pack_length=1024, prefix_sharing=True)(features)
    return {"packed": on(packed, device), "packed_explicit": on(explicit_mask(packed), device),
            "shared": on(shared, device)}  # fmt: skip


TRAIN = {  # contender: (layout, attention implementation)
    "packed_block_causal": ("packed", "sdpa"),
    "packed_dense_mask": ("packed_explicit", "sdpa"),
    "shared_dense_mask": ("shared", "sdpa"),
    "shared_eager": ("shared", "eager"),
    "shared_segment_sdpa": ("shared", "segment_sdpa"),
}
FORWARD = {"packed_block_causal": ("packed", "sdpa"), "shared_dense_mask": ("shared", "sdpa"),
           "shared_flex": ("shared", "flex_attention"), "shared_segment_sdpa": ("shared", "segment_sdpa")}  # fmt: skip


def attempt(step, contender: tuple[str, str], batch: dict) -> tuple[float, dict] | str:
    """(seconds, outputs) of one step, or the error where the contender cannot run here."""
    layout, impl = contender
    try:
        return step(impl, batch[layout])
    except Exception as e:  # e.g. flex's compiler failing on CPU: the finding, not a crash
        if impl == "sdpa":
            raise
        return f"{type(e).__name__}: {str(e).strip().splitlines()[0]}"


def rounds(step, contenders: dict, batches: list[dict], prime: set[str], repeats: int = 1) -> dict:
    """Each contender on each batch, in a rotating order, `repeats` times round (the fastest time
    counts); the first batch a warm-up. Contenders in `prime` run once untimed on each batch first
    (compilation), that call timed apart. A contender that raises is dropped from then on, its
    error reported."""
    seconds = {k: [] for k in contenders}
    first_calls = {k: [] for k in prime}
    largest = {k: {} for k in contenders}
    failed: dict[str, str] = {}
    names = list(contenders)
    for i, b in enumerate(batches):
        outputs, fastest = {}, {}
        primed = [n for n in names if n in prime]
        for k, name in enumerate(primed + (names[i % len(names) :] + names[: i % len(names)]) * repeats):
            if name in failed:
                continue
            got = attempt(step, contenders[name], b)
            if isinstance(got, str):
                failed[name] = f"batch {i}: {got}"
            elif k < len(primed):
                first_calls[name].append(got[0])
            else:
                outputs[name] = got[1]
                fastest[name] = min(fastest.get(name, got[0]), got[0])
        for name, out in outputs.items():
            if i > 0 and name not in failed:
                seconds[name].append(fastest[name])
            for key, value in out.items():
                diff = float((value - outputs[BASELINE][key]).abs().max())
                largest[name][key] = max(largest[name].get(key, 0.0), diff)
    return {name: summary(name, seconds, largest[name], first_calls.get(name), failed.get(name)) for name in names}


def summary(name: str, seconds: dict, largest: dict, first_calls: list | None, failed: str | None) -> dict:
    row: dict = {} if failed is None else {"failed": failed}
    if seconds[name]:  # a dropped contender's timed batches are the first ones: zip pairs them right
        n = len(seconds[name])
        mean, base = (sum(seconds[k][:n]) / n for k in (name, BASELINE))
        paired = median(s / b for s, b in zip(seconds[name], seconds[BASELINE], strict=False))
        row.update(seconds_per_step=mean, ratio_to_packed_block_causal=mean / base, median_ratio_per_batch=paired,
                   seconds_per_batch=seconds[name], max_difference_from_packed_block_causal=largest)  # fmt: skip
    if first_calls is not None:
        row["first_call_seconds_per_batch"] = first_calls
    return row


def try_flex_training(runner: Runner, batch: dict) -> str:
    try:
        runner.train_step("flex_attention", batch)
    except Exception as e:  # whatever it raises is the finding
        runner.model.zero_grad()
        return f"{type(e).__name__}: {str(e).splitlines()[0]}"
    return "ran"


def flex_compiled(runner: Runner, batch: dict) -> bool:
    """Whether a flex forward runs inductor's kernel (not flex's unfused eager reference)."""
    with profile() as prof:
        runner.forward("flex_attention", batch)
    return any("CompiledFxGraph" in e.key for e in prof.key_averages())


def sdpa_kernels(runner: Runner, batch: dict) -> list[str]:
    """The aten kernels sdpa dispatched to in one training step on this batch (dense mask)."""
    with profile() as prof:
        runner.train_step("sdpa", batch)
    return sorted({e.key for e in prof.key_averages() if "scaled_dot_product" in e.key})


def mask_stats(b: dict) -> dict:
    """How much of the (R, L, L) the dense kernels compute that the mask lets through, and the
    share of flex's 128 x 128 blocks it visits."""
    shared, packed = b["shared"], b["packed_explicit"]
    R, L, _ = shared["attention"].shape
    block = shared_block_mask(shared["segments"].cpu(), R, L, "cpu")
    return {"rows_packed": list(packed["attention"].shape[:2]), "rows_shared": [R, L],
            "allowed_share_packed": float(packed["attention"].float().mean()),
            "allowed_share_shared": float(shared["attention"].float().mean()),
            "flex_blocks_visited_shared": 1 - block.sparsity() / 100}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="attention_mask.json")
    parser.add_argument("--batches", type=int, default=4, help="timed built-in batches (+1 warm-up); 0: none")
    parser.add_argument("--hh-batches", type=int, default=3, help="timed HH helpful batches; 0: none")
    parser.add_argument("--bf16", action="store_true", help="the steps under bf16 autocast, as training runs them")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--repeats", type=int, default=1, help="rounds per batch; the fastest counts (busy machines)")
    args = parser.parse_args()
    # compilation timed cold: inductor's on-disk caches start empty (a second run would reuse them)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="attention_mask_inductor_")
    torch.manual_seed(0)
    backbone = load_backbone("smollm2")
    model = HybridRewardModel(backbone.model).to(args.device)
    torch.nn.init.normal_(model.reward_head.weight, std=0.05)  # rewards that differ, to compare
    model.freeze_bottom(-10)
    pad = backbone.tokenizer.pad_token_id
    encoder = PairTokenizer(backbone.tokenizer, 512, 256)
    sets = {"builtin": builtin_pairs(HafConfig())[: 8 * (args.batches + 1)]} if args.batches > 0 else {}
    if HH.is_file() and args.hh_batches > 0:
        n = 8 * (args.hh_batches + 1)
        sets["hh_helpful"] = load_source(str(HH), DataOptions(on_error="skip", max_pairs=n))[0]
    runner = Runner(model, HybridObjective(HafConfig()), args.device, args.bf16)
    report: dict = {"precision": "bf16 autocast" if args.bf16 else "fp32", "device": args.device,
                    "torch": torch.__version__, "threads": torch.get_num_threads(), "pairs_per_step": 8,
                    "repeats": args.repeats}  # fmt: skip
    for name, pairs in sets.items():
        features = pair_features(encoder.tokenize(pairs).pairs, torch.zeros(len(pairs), 2) - 30.0)
        batches = [layouts(pad, features[i : i + 8], args.device) for i in range(0, len(features), 8)]
        row: dict = {"masks": [mask_stats(b) for b in batches]}
        if name == "builtin":
            row["sdpa_kernels_one_step"] = sdpa_kernels(runner, batches[0]["shared"])
        row["flex_training"] = try_flex_training(runner, batches[0]["shared"])
        torch._dynamo.reset()  # after a failed call, dynamo would run flex uncompiled from then on
        train = dict(TRAIN) if name == "builtin" else {k: v for k, v in TRAIN.items() if k != "shared_eager"}
        if row["flex_training"] == "ran":
            train["shared_flex"] = ("shared", "flex_attention")
        start = time.perf_counter()
        row["train"] = rounds(runner.train_step, train, batches, {"shared_flex"} & set(train), args.repeats)
        row["train_wall_seconds"] = time.perf_counter() - start
        start = time.perf_counter()
        row["forward_no_grad"] = rounds(runner.forward, FORWARD, batches, {"shared_flex"}, args.repeats)
        row["forward_wall_seconds"] = time.perf_counter() - start
        if "failed" not in row["forward_no_grad"]["shared_flex"]:
            row["flex_forward_compiled"] = flex_compiled(runner, batches[-1]["shared"])
        report[name] = row
        print(name, json.dumps(row), flush=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
