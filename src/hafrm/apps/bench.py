"""`hafrm bench`: hafrm against TRL on one model, one data set and one effective batch.

Each contender runs in its own subprocess (so its peak memory is its own), on the same pairs in
the same order, with the same batch size, precision and learning rate:

  hafrm_reward    HafTrainer, BT loss only (the paper's Baseline)
  hafrm_hybrid    HafTrainer, BT + 0.2 * DPO loss, reference log-probs precomputed once (timed apart),
                  packed without prefix sharing (each pair's prompt computed twice)
  hafrm_hybrid_shared  hafrm_hybrid with prefix sharing in its steps and its reference pass: each
                  pair one segment [prompt | chosen | rejected], the prompt computed once
  trl_reward      trl.RewardTrainer on AutoModelForSequenceClassification
  trl_dpo         trl.DPOTrainer with a live reference model
  seqcls_score    AutoModelForSequenceClassification scoring, batched and padded
  hafrm_score     hafrm's scorer (`RewardModel.score_batch`)

Training contenders are timed per optimizer step by a Trainer callback (the first step is a
warm-up and is not counted), which also keeps what the Trainer logs at every step under TRL's
names (`per_step`: `loss`, and `logps/chosen`, `logps/rejected` where the trainer logs them; the
warm-up step first). TRL is run without gradient checkpointing, as hafrm is.
Every contender runs in fp32; each training result says so (`precision`).

Throughput: `pairs_per_s` is the headline, the one unit every contender's work has in common.
`tokens_per_s` counts each pair's two sequences whole (the prompt twice), whatever the layout, so
it moves with pairs/s. `model_flops_per_s` is 6 x (parameters less the input embeddings and the
LM head) x the tokens the contender's forward computes, per second: both sequences of a pair, but
the prompt once in a pair the prefix-shared layout shares (so hafrm_hybrid_shared counts fewer
FLOPs for the same pairs); padding, attention scores and the LM head are not counted. `mfu` is
that over the measured matmul peak (`matmul_peak_gflops`) of the precision the contender ran at.
hafrm's contenders also give `row_tokens_per_step`: the tokens of the rows their collator builds
for a timed step, padding included.

hafrm_hybrid_shared against hafrm_hybrid: `ratio/hybrid_shared_vs_hybrid_pairs_per_s`, and the
largest difference of the logged `loss` (`max_loss_difference/…`) and of `logps/chosen` and
`logps/rejected` (`max_logps_difference/…`) at the same steps: rounding only, for the same pairs
and the same results. (The first step's loss is the same in any layout, the reward head starting
at zero and the policy at its reference; its log-probs are not.)
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    TrainerCallback,
    TrainingArguments,
)

from hafrm.config import HafConfig
from hafrm.data.formats import DataOptions
from hafrm.data.shared import shares_prompt
from hafrm.data.sources import read_source
from hafrm.data.tokenize import PairCollator, PairTokenizer, TokenizedPair, pair_dataset, pair_features
from hafrm.evaluation.scoring import RewardModel
from hafrm.modeling.backbone import load_backbone
from hafrm.modeling.hybrid import HybridRewardModel
from hafrm.training.reference import model_fingerprint, reference_logps
from hafrm.training.trainer import HafTrainer

SHARED_HH = Path("../shared/data/hh-helpful-base-test.jsonl.gz")
TRAIN_CONTENDERS = ("hafrm_reward", "hafrm_hybrid", "hafrm_hybrid_shared", "trl_reward", "trl_dpo")
SCORE_CONTENDERS = ("seqcls_score", "hafrm_score")
CONTENDERS = TRAIN_CONTENDERS + SCORE_CONTENDERS
LOGGED = ("loss", "logps/chosen", "logps/rejected")  # kept from every step's log (TRL's names)


@dataclass(kw_only=True)
class BenchSpec:
    model: str = "smollm2"
    data: str | None = None  # None: HH helpful from ../shared/data when present, else the built-in task
    pairs: int = 64  # pairs read (the first that fit max_length)
    batch_size: int = 8  # pairs per optimizer step, for every contender
    steps: int = 4  # timed steps, after one warm-up step
    max_length: int = 512
    learning_rate: float = 1e-5
    packing: bool = True  # hafrm's contenders pack; TRL pads (its default)
    contenders: list[str] = field(default_factory=lambda: list(CONTENDERS))


# ---------------------------------------------------------------------------------------- shared
def matmul_peak_gflops(dtype: torch.dtype, sizes: tuple[int, ...] = (1024, 2048), seconds: float = 1.0) -> float:
    """Best n x n matmul GFLOP/s for `dtype` on this CPU, over a few sizes."""
    best = 0.0
    for n in sizes:
        a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
        start = time.perf_counter()
        a @ b  # warm-up
        if time.perf_counter() - start > seconds:  # emulated dtypes: one product says enough
            return max(best, 2 * n**3 / (time.perf_counter() - start) / 1e9)
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            t = time.perf_counter()
            a @ b
            best = max(best, 2 * n**3 / (time.perf_counter() - t) / 1e9)
    return best


def step_times(model: torch.nn.Module, objective: Any, batches: list[dict[str, Any]]) -> list[float]:
    """Seconds of forward + backward for each collated batch (gradients cleared after each)."""
    times = []
    for inputs in batches:
        start = time.perf_counter()
        objective(model, inputs).loss.backward()
        model.zero_grad()
        times.append(time.perf_counter() - start)
    return times


def matmul_params(model: torch.nn.Module) -> int:
    """Parameters in the per-token matmuls of 6N: all but the input embeddings (a lookup) and the LM head."""
    skip = {id(model.get_input_embeddings().weight)}
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None:
        skip.add(id(head.weight))
    return sum(p.numel() for p in model.parameters() if id(p) not in skip)


def _load_pairs(spec: BenchSpec):
    """(pairs, tokenized pairs, data name): the same list in every contender."""
    data = spec.data or (str(SHARED_HH) if SHARED_HH.is_file() else "builtin")
    cfg = HafConfig(builtin_pairs=max(4 * spec.pairs, 100))  # the built-in task's size
    pairs = read_source(data, cfg, DataOptions(on_error="skip"), require_pairs=False).pairs
    enc = PairTokenizer(load_backbone(spec.model).tokenizer, 10**6, 10**6)
    kept, toks = [], []
    for pair in pairs:  # no truncation anywhere: every contender sees the whole pair
        t = enc.tokenize([pair]).pairs
        if t and max(len(t[0].chosen_ids), len(t[0].rejected_ids)) <= spec.max_length:
            kept.append(pair)
            toks.append(t[0])
        if len(kept) == spec.pairs:
            break
    return kept, toks, data


class _StepTimer:
    """A TrainerCallback that records the wall time of every optimizer step, and the metrics of
    LOGGED the Trainer logs after each (`logging_steps=1`: the log comes after the step's timing)."""

    def __init__(self):
        timer = self

        class Callback(TrainerCallback):
            def on_step_begin(self, args, state, control, **kw):
                timer.start = time.perf_counter()

            def on_step_end(self, args, state, control, **kw):
                timer.times.append(time.perf_counter() - timer.start)

            def on_log(self, args, state, control, logs=None, **kw):
                if logs and "loss" in logs:  # a step's log, not the run's closing summary (train_loss)
                    for key in LOGGED:
                        if key in logs:
                            timer.per_step.setdefault(key, []).append(logs[key])

        self.times: list[float] = []
        self.per_step: dict[str, list[float]] = {}
        self.start = 0.0
        self.callback = Callback()


def _common_args(spec: BenchSpec, out: str) -> dict[str, Any]:
    return dict(
        output_dir=out,
        per_device_train_batch_size=spec.batch_size,
        max_steps=spec.steps + 1,
        learning_rate=spec.learning_rate,
        lr_scheduler_type="constant",
        logging_steps=1,  # every step's metrics, for `per_step`
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        bf16=False,
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
        train_sampling_strategy="sequential",  # the same pairs in the same order for everyone
        seed=0,
    )


def _precision(args: TrainingArguments, model: torch.nn.Module, bf16_steps: bool = False) -> str:
    """The precision a Trainer's steps ran at: bf16 under its autocast (the Trainer's own, or
    HafTrainer's `bf16_steps`) or with bf16 weights, else fp32."""
    bf16 = args.bf16 or bf16_steps or next(model.parameters()).dtype == torch.bfloat16
    return "bf16" if bf16 else "fp32"


def _pair_tokens(p: TokenizedPair, prefix_sharing: bool = False) -> int:
    """The tokens a forward runs for one pair: both sequences, the prompt once where the
    prefix-shared layout shares it (padding not counted)."""
    n = len(p.chosen_ids) + len(p.rejected_ids)
    if prefix_sharing and shares_prompt(p.chosen_ids, p.rejected_ids, p.chosen_prompt_len, p.rejected_prompt_len):
        n -= p.chosen_prompt_len
    return n


def _train_result(
    spec: BenchSpec,
    timer: _StepTimer,
    toks: list[TokenizedPair],
    n_params: int,
    precision: str,
    prefix_sharing: bool = False,
    extra: dict | None = None,
) -> dict:
    """Throughput of the timed steps (the module docstring says what each count is), the
    precision they ran at and the metrics logged at every step."""
    timed = timer.times[1:]
    pairs = toks[spec.batch_size : spec.batch_size * (spec.steps + 1)]  # the timed steps' (sequential order)
    return {
        "step_time_s": sum(timed) / len(timed),
        "tokens_per_s": sum(_pair_tokens(p) for p in pairs) / sum(timed),
        "pairs_per_s": spec.batch_size * len(timed) / sum(timed),
        "model_flops_per_s": 6 * n_params * sum(_pair_tokens(p, prefix_sharing) for p in pairs) / sum(timed),
        "precision": precision,
        "per_step": timer.per_step,
        **(extra or {}),
    }


# ------------------------------------------------------------------------------------ contenders
def _hafrm_train(spec: BenchSpec, mode: str, *, prefix_sharing: bool) -> dict:
    """HafTrainer on the bench's pairs. `prefix_sharing` is set here for the steps and the reference
    pass alike, never left to HafConfig's default, so each contender keeps its layout."""
    cfg = HafConfig(
        mode=mode,
        freeze_layers=0,
        learning_rate=spec.learning_rate,
        packing=spec.packing,
        prefix_sharing=prefix_sharing,
    )  # first: sharing without packing fails here, before anything loads
    _, toks, _ = _load_pairs(spec)
    toks = toks[: spec.batch_size * (spec.steps + 1)]
    backbone = load_backbone(spec.model)
    tokenizer = backbone.tokenizer
    model = HybridRewardModel(backbone.model, keep_logits_bytes=cfg.logprob_keep_mib * 2**20)
    pack = cfg.pack_length if cfg.packing else None
    collate = PairCollator(tokenizer.pad_token_id, pack_length=pack, prefix_sharing=cfg.prefix_sharing)
    ref, ref_seconds = None, 0.0
    if cfg.needs_policy:
        start = time.perf_counter()
        key = model_fingerprint(model) + (":prefix-shared" if cfg.prefix_sharing else "")  # as the recipe keys it
        with tempfile.TemporaryDirectory() as cache:  # a cold cache: the pass is really run
            ref = reference_logps(
                model, toks, Path(cache), tokenizer.pad_token_id, 16, key, pack, prefix_sharing=cfg.prefix_sharing
            ).logps
        ref_seconds = time.perf_counter() - start
    features = pair_features(toks, ref)
    timer = _StepTimer()
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(**_common_args(spec, out), remove_unused_columns=False)
        trainer = HafTrainer(
            model=model,
            args=args,
            train_dataset=pair_dataset(features),
            data_collator=collate,
            train_config=cfg,
            eval_pairs=[],
            eval_features=[],
            pad_token_id=tokenizer.pad_token_id,
            model_card={},
            callbacks=[timer.callback],
        )
        trainer.train()
    B = spec.batch_size
    rows = [collate(features[i : i + B])["input_ids"].numel() for i in range(B, len(features), B)]  # the timed steps'
    extra = {"reference_pass_s": ref_seconds, "row_tokens_per_step": sum(rows) / len(rows)}
    precision = _precision(trainer.args, model, trainer.bf16_steps)
    return _train_result(spec, timer, toks, matmul_params(backbone.model), precision, cfg.prefix_sharing, extra)


def _trl_dataset(pairs):
    import datasets

    return datasets.Dataset.from_list(
        [
            {
                "prompt": p.prompt,
                "chosen": [{"role": "assistant", "content": p.chosen}],
                "rejected": [{"role": "assistant", "content": p.rejected}],
            }
            for p in pairs
        ]
    )


def _run_trl(spec: BenchSpec, trainer_cls, config_cls, model, tokenizer, **kwargs) -> dict:
    """Train `model` with a TRL trainer on the bench's pairs and time its steps."""
    pairs, toks, _ = _load_pairs(spec)
    n = spec.batch_size * (spec.steps + 1)
    timer = _StepTimer()
    with tempfile.TemporaryDirectory() as out:
        args = config_cls(**_common_args(spec, out), max_length=spec.max_length, gradient_checkpointing=False)
        trainer = trainer_cls(
            model=model,
            args=args,
            train_dataset=_trl_dataset(pairs[:n]),
            processing_class=tokenizer,
            callbacks=[timer.callback],
            **kwargs,
        )
        trainer.train()
    return _train_result(spec, timer, toks[:n], matmul_params(model), _precision(trainer.args, model))


def _trl_reward(spec: BenchSpec) -> dict:
    from trl import RewardConfig, RewardTrainer

    backbone = load_backbone(spec.model)
    tokenizer = backbone.tokenizer
    model = AutoModelForSequenceClassification.from_pretrained(backbone.path, num_labels=1, dtype=torch.float32)
    model.config.pad_token_id = tokenizer.pad_token_id
    return _run_trl(spec, RewardTrainer, RewardConfig, model, tokenizer)


def _trl_dpo(spec: BenchSpec) -> dict:
    from trl import DPOConfig, DPOTrainer

    backbone = load_backbone(spec.model)
    tokenizer, path = backbone.tokenizer, backbone.path
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    ref_model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    config = partial(DPOConfig, precompute_ref_log_probs=False)  # a live reference forward every step
    return _run_trl(spec, DPOTrainer, config, model, tokenizer, ref_model=ref_model)


def _score(spec: BenchSpec, which: str) -> dict:
    pairs, toks, _ = _load_pairs(spec)
    prompts = [p.prompt for p in pairs for _ in (0, 1)]
    responses = [r for p in pairs for r in (p.chosen, p.rejected)]
    backbone = load_backbone(spec.model)
    tokenizer, path = backbone.tokenizer, backbone.path
    batch = 2 * spec.batch_size
    if which == "hafrm_score":
        rm = RewardModel(HybridRewardModel(backbone.model).eval(), tokenizer, {"mode": "hybrid"}, Path(path))
        rm.score_batch(prompts[:batch], responses[:batch], batch_size=batch)  # warm-up
        start = time.perf_counter()
        rm.score_batch(prompts, responses, batch_size=batch)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=torch.float32).eval()
        model.config.pad_token_id = tokenizer.pad_token_id
        texts = [
            tokenizer.apply_chat_template([*p, {"role": "assistant", "content": r}], tokenize=False)
            for p, r in zip(prompts, responses, strict=True)
        ]
        with torch.no_grad():
            model(**tokenizer(texts[:batch], return_tensors="pt", padding=True))  # warm-up
            start = time.perf_counter()
            for i in range(0, len(texts), batch):
                model(**tokenizer(texts[i : i + batch], return_tensors="pt", padding=True))
    seconds = time.perf_counter() - start
    tokens = sum(len(p.chosen_ids) + len(p.rejected_ids) for p in toks)
    return {"pairs_per_s": len(pairs) / seconds, "tokens_per_s": tokens / seconds, "seconds": seconds}


def run_contender(name: str, spec: BenchSpec) -> dict:
    torch.manual_seed(0)
    if name == "hafrm_reward":
        result = _hafrm_train(spec, "reward", prefix_sharing=False)
    elif name == "hafrm_hybrid":
        result = _hafrm_train(spec, "hybrid", prefix_sharing=False)
    elif name == "hafrm_hybrid_shared":
        result = _hafrm_train(spec, "hybrid", prefix_sharing=True)
    elif name == "trl_reward":
        result = _trl_reward(spec)
    elif name == "trl_dpo":
        result = _trl_dpo(spec)
    else:
        result = _score(spec, name)
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


# -------------------------------------------------------------------------------------- the run
def _ran(results: dict, *names: str) -> bool:
    return all(name in results and "error" not in results[name] for name in names)


def _ratio(results: dict, a: str, b: str, key: str) -> float | None:
    return results[a][key] / results[b][key] if _ran(results, a, b) else None


def _max_difference(results: dict, a: str, b: str, *keys: str) -> float | None:
    """The largest |a's - b's| of these logged metrics at the same steps: rounding only, where a and
    b train the same model on the same pairs in the same order (the same results)."""
    if not _ran(results, a, b):
        return None
    steps = [zip(results[a]["per_step"].get(k, []), results[b]["per_step"].get(k, []), strict=False) for k in keys]
    return max((abs(x - y) for pairs in steps for x, y in pairs), default=None)


def mfu(result: dict, peaks_gflops: dict[str, float]) -> float:
    """A training result's model FLOP/s over the matmul peak of the precision it ran at."""
    return result["model_flops_per_s"] / (peaks_gflops[result["precision"]] * 1e9)


def run_bench(spec: BenchSpec, log=print) -> dict[str, Any]:
    """Every contender in its own subprocess, then the ratios the performance targets are set on."""
    started = time.time()
    first = {"fp32": matmul_peak_gflops(torch.float32), "bf16": matmul_peak_gflops(torch.bfloat16)}
    results: dict[str, Any] = {}
    for name in spec.contenders:
        log(f"bench: {name} …")
        with tempfile.NamedTemporaryFile("r", suffix=".json") as out:
            cmd = [sys.executable, "-m", "hafrm.apps.bench", name, json.dumps(asdict(spec)), out.name]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
                results[name] = {"error": " | ".join(tail)}
            else:
                results[name] = json.loads(Path(out.name).read_text())
        log(f"bench: {name}: {results[name]}")
    # the peaks probed again after the contenders, the best kept: a VM's first probe can run slow
    # (one HH bench measured fp32 at 76 GFLOP/s before its contenders, another run 129)
    peaks = {dtype: max(gflops, matmul_peak_gflops(getattr(torch, {"fp32": "float32", "bf16": "bfloat16"}[dtype])))
             for dtype, gflops in first.items()}  # fmt: skip
    for result in results.values():
        if "model_flops_per_s" in result:
            result["mfu"] = mfu(result, peaks)
    _, toks, data = _load_pairs(spec)
    best_peak = max(peaks.values()) * 1e9
    hybrid = results.get("hafrm_hybrid", {})
    report = {
        "spec": asdict(spec),
        "data": data,
        "pairs_available": len(toks),
        "machine": {
            "matmul_peak_gflops_fp32": peaks["fp32"],
            "matmul_peak_gflops_bf16": peaks["bf16"],
            "first_probe_gflops": first,
        },
        "results": results,
        "ratio/hybrid_vs_reward_step_time": _ratio(results, "hafrm_hybrid", "hafrm_reward", "step_time_s"),
        "ratio/hybrid_shared_vs_hybrid_pairs_per_s": _ratio(
            results, "hafrm_hybrid_shared", "hafrm_hybrid", "pairs_per_s"
        ),
        "max_loss_difference/hybrid_shared_vs_hybrid": _max_difference(
            results, "hafrm_hybrid_shared", "hafrm_hybrid", "loss"
        ),
        "max_logps_difference/hybrid_shared_vs_hybrid": _max_difference(
            results, "hafrm_hybrid_shared", "hafrm_hybrid", "logps/chosen", "logps/rejected"
        ),
        "ratio/hybrid_vs_trl_reward_tokens_per_s": _ratio(results, "hafrm_hybrid", "trl_reward", "tokens_per_s"),
        "ratio/hybrid_vs_trl_dpo_pairs_per_s": _ratio(results, "hafrm_hybrid", "trl_dpo", "pairs_per_s"),
        "ratio/hybrid_vs_reward_peak_memory": _ratio(results, "hafrm_hybrid", "hafrm_reward", "peak_rss_mib"),
        "ratio/score_vs_seqcls_pairs_per_s": _ratio(results, "hafrm_score", "seqcls_score", "pairs_per_s"),
        "model_flops": "6 x (parameters less the input embeddings and the LM head) x tokens the forward computes"
        " (a shared prompt once, no padding) / s; mfu: that / the matmul peak of the precision run at",
        "mfu/hybrid": hybrid.get("mfu"),
        "mfu/hybrid_shared": results.get("hafrm_hybrid_shared", {}).get("mfu"),
        "fraction_of_best_matmul_peak": (
            hybrid["model_flops_per_s"] / best_peak if "model_flops_per_s" in hybrid else None
        ),
        "seconds": time.time() - started,
    }
    return report


def _worker(argv: list[str]) -> None:
    name, spec_json, out = argv
    spec = BenchSpec(**json.loads(spec_json))
    Path(out).write_text(json.dumps(run_contender(name, spec)))


if __name__ == "__main__":
    _worker(sys.argv[1:])
