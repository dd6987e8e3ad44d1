"""`train(cfg)`: data -> tokens -> cached reference log-probs -> Trainer -> saved model + metrics."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import TrainingArguments, set_seed
from transformers.trainer_utils import get_last_checkpoint

from hafrm.config import SELECTION_METRICS, HafConfig
from hafrm.data import builtin
from hafrm.data.io import LoadReport, load_source, split_by_prompt, summary_line
from hafrm.data.tokenize import PairCollator, PairTokenizer, TokenizeResult, pad_rows, pair_dataset, pair_features
from hafrm.data.types import PreferencePair
from hafrm.errors import ConfigError, DataError
from hafrm.evaluation.baselines import shortcut_report
from hafrm.evaluation.evaluate import EvalResult, evaluate_pairs, score_stats
from hafrm.evaluation.scoring import STATS_KEY, RewardModel
from hafrm.modeling.backbone import cache_root, load_backbone
from hafrm.modeling.hybrid import HybridRewardModel, position_ids_from_mask
from hafrm.modeling.prefix import PrefixCache, fill, verify
from hafrm.training.precision import resolve_precision
from hafrm.training.reference import model_fingerprint, reference_logps
from hafrm.training.trainer import HafTrainer
from hafrm.version import __version__

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    output_dir: Path
    metrics: dict[str, float]  # "eval/..." keys, as written to metrics.json
    eval_result: EvalResult
    train_pairs: int
    eval_pairs: int
    dropped: dict[str, int]
    precision: str
    seconds: float
    reference_cache_hits: int
    history: dict[int, EvalResult] = dataclasses.field(default_factory=dict)  # step -> eval at that step
    extra_eval: dict[str, EvalResult] = dataclasses.field(default_factory=dict)  # train(extra_eval=...)
    log_history: list[dict[str, float]] = dataclasses.field(default_factory=list)  # the Trainer's logs
    reward_model: Any = None  # the trained model as a `hafrm.RewardModel`, in memory (score_batch, ...)


# An empty system turn: without one, the chat template adds its own (18 tokens for SmolLM2).
BUILTIN_SYSTEM_PROMPT = ""


def builtin_skills(item: str) -> tuple[str, ...] | None:
    """The skills a data item names: 'builtin' = all, 'builtin:arithmetic,facts' = those; None if
    the item is not the built-in task."""
    name, _, rest = item.partition(":")
    if name != "builtin":
        return None
    skills = tuple(s.strip() for s in rest.split(",") if s.strip()) if rest else builtin.SKILLS
    unknown = [s for s in skills if s not in builtin.SKILLS]
    if unknown or not skills or len(set(skills)) != len(skills):
        raise DataError(f"{item}: name distinct built-in skills among {', '.join(builtin.SKILLS)} (got {rest!r})")
    return skills


def builtin_pairs(cfg: HafConfig, skills: tuple[str, ...] | None = None, n: int | None = None) -> list[PreferencePair]:
    """`n` pairs of the built-in task's `skills` (default all), with its short system message.
    By default `n` is the skills' share of `cfg.builtin_pairs`, the size of the whole task. (The
    pairs are generated for those skills alone: 'builtin:facts' holds as many facts pairs as
    'builtin' does, not the same ones.)"""
    skills = skills or builtin.SKILLS
    if n is None:
        n = cfg.builtin_pairs * len(skills) // len(builtin.SKILLS)
    system = {"role": "system", "content": BUILTIN_SYSTEM_PROMPT}
    most = builtin.max_pairs(skills)
    if n > most:
        whole = f"; {builtin.max_pairs()} for the whole task" if len(skills) < len(builtin.SKILLS) else ""
        raise ConfigError(
            f"builtin_pairs: {n} pairs of {'+'.join(skills)} asked for (builtin_pairs {cfg.builtin_pairs}), but "
            f"the built-in templates make at most {most} unique ones{whole}"
        )
    pairs = builtin.generate_pairs(n, seed=cfg.seed, skills=skills)
    return [dataclasses.replace(p, prompt=[system, *p.prompt]) for p in pairs]


def load_data(cfg: HafConfig) -> tuple[list[PreferencePair], list[PreferencePair], list[LoadReport]]:
    """Train and eval pairs from `cfg.data` / `cfg.eval_data` ('builtin' = the built-in task).

    Each source is read with `cfg.data_options()` and capped; the mix is split by a hash of the
    prompt, so no prompt is on both sides. The reports account for every record read.
    """
    opts = cfg.data_options()
    reports: list[LoadReport] = []

    def read(item: str) -> list[PreferencePair]:
        skills = builtin_skills(item)
        if skills is not None:
            return builtin_pairs(cfg, skills)
        pairs, report = load_source(item, opts)
        reports.append(report)
        log.warning("%s", summary_line(report))
        if not pairs:
            raise DataError(f"{item}: no preference pairs kept ({summary_line(report)})")
        return pairs

    pairs = [p for item in cfg.data for p in read(item)]
    if cfg.eval_data:
        eval_pairs = [p for item in cfg.eval_data for p in read(item)]
        return pairs, eval_pairs, reports
    train, test = split_by_prompt(pairs, cfg.eval_fraction, cfg.seed)
    if not train or not test:
        raise DataError(f"{len(pairs)} pairs are too few to hold out an eval split of {cfg.eval_fraction}")
    return train, test, reports


def _report_drops(name: str, res: TokenizeResult) -> dict[str, int]:
    for line in res.summary():
        log.warning("%s %s", name, line)
    counts = {f"{name}/dropped/{src or 'data'}/{why}": n for (src, why), n in res.dropped.items()}
    counts |= {f"{name}/truncated/{src or 'data'}/{what}": n for (src, what), n in res.truncated.items()}
    return counts


def _training_args(cfg: HafConfig, n_train: int) -> TrainingArguments:
    steps_per_epoch = math.ceil(n_train / (cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps))
    total = cfg.max_steps if cfg.max_steps > 0 else max(1, int(steps_per_epoch * cfg.num_train_epochs))
    eval_steps = cfg.eval_steps or max(1, (total + 1) // 2)
    save_steps = cfg.save_steps or eval_steps
    select = cfg.select_by != "step"
    if select and save_steps % eval_steps:
        save_steps = eval_steps  # the Trainer can only keep the best of evaluated checkpoints
    return TrainingArguments(
        output_dir=cfg.output_dir,
        learning_rate=cfg.learning_rate,
        weight_decay=cfg.weight_decay,
        warmup_steps=int(cfg.warmup_ratio * total),
        lr_scheduler_type=cfg.lr_scheduler_type,
        per_device_train_batch_size=cfg.per_device_train_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        num_train_epochs=cfg.num_train_epochs,
        max_steps=cfg.max_steps,
        max_grad_norm=cfg.max_grad_norm,
        eval_strategy="steps",
        eval_steps=eval_steps,
        save_strategy="steps",
        save_steps=save_steps,
        save_total_limit=cfg.save_total_limit,
        load_best_model_at_end=select,
        metric_for_best_model=cfg.select_by if select else None,
        greater_is_better=SELECTION_METRICS[cfg.select_by] if select else None,
        logging_steps=cfg.logging_steps,
        seed=cfg.seed,
        bf16=False,  # HafTrainer autocasts its training steps itself (bf16_steps), not evaluation
        remove_unused_columns=False,
        train_sampling_strategy="group_by_length" if cfg.group_by_length else "random",
        report_to="none",
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
        save_only_model=False,
    )


def prefix_blocker(cfg: HafConfig, model: HybridRewardModel) -> str | None:
    """Why the frozen-prefix cache cannot be used for this run, or None."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 or torch.cuda.device_count() > 1:
        return "it runs in a single process on one device"
    if cfg.resume:
        return "a resumed run's frozen layers come from its checkpoint, loaded later"
    text_config = model.config.get_text_config()
    dropout = {k: v for k, v in text_config.to_dict().items() if ("dropout" in k or "pdrop" in k) and v}
    if dropout:
        return f"the model has dropout ({dropout}), so its frozen layers are not deterministic in training"
    return None


def _prefix_cache(
    cfg: HafConfig,
    model: HybridRewardModel,
    frozen: int,
    train_tok: TokenizeResult,
    eval_toks: list[TokenizeResult],
    cache: Path,
    pad_id: int,
    train_bf16: bool = False,
) -> None:
    """Turn on the frozen-prefix cache (hafrm.modeling.prefix) when layers are frozen, after checking on
    a real batch that the cached path equals the full forward, and fill it from disk or once.

    The eval sets' states are computed in fp32 whatever training's precision: evaluation and
    scoring run in fp32, so the evaluation during training then equals a later `hafrm eval` of
    the saved model. With `train_bf16` the training set's states are computed under the bf16
    autocast of the training steps, as an uncached bf16 step computes them (about twice as fast
    as fp32 here); the eval sets are filled first, so a sequence in both keeps its fp32 states."""
    if frozen <= 0 or cfg.prefix_cache_mib <= 0:
        return
    why = prefix_blocker(cfg, model)
    if why:
        log.warning("frozen-prefix cache off: %s", why)
        return
    toks = [*eval_toks, train_tok]
    hidden = model.config.get_text_config().hidden_size
    sequences = [s for tok in toks for p in tok.pairs for s in (p.chosen_ids, p.rejected_ids)]
    need = sum(len(s) for s in sequences) * hidden * 4
    if need > cfg.prefix_cache_mib * 2**20:
        log.warning("frozen-prefix cache off: %.0f MiB of states > prefix_cache_mib %d; the frozen layers run every "
                    "step", need / 2**20, cfg.prefix_cache_mib)  # fmt: skip
        return
    model.prefix_cache = PrefixCache(frozen, cfg.prefix_cache_mib * 2**20)
    longest = sorted(sequences, key=len)[-4:]  # the longest: a sliding window or long-range rope shows there
    probe = pad_rows(longest, [0] * len(longest), pad_id)
    mask = probe["attention_mask"]
    diff = verify(model, probe["input_ids"], position_ids_from_mask(mask), mask)
    if not diff <= 1e-3:
        log.warning("frozen-prefix cache off: the cached path differs from the full forward by %.2g here", diff)
        model.prefix_cache = None
        return
    fingerprint = model_fingerprint(model)
    hits = []
    for tok in toks:
        bf16 = train_bf16 and tok is train_tok
        with torch.autocast(model.device.type, torch.bfloat16, enabled=bf16):
            seqs = [s for p in tok.pairs for s in (p.chosen_ids, p.rejected_ids)]
            hits.append(fill(model, seqs, cache, fingerprint + (":bf16-autocast" if bf16 else ""), pad_id,
                             cfg.pack_length)[1])  # fmt: skip
    log.info("frozen-prefix cache: %d sequences, %.0f MiB, %d of %d sets from disk", len(model.prefix_cache),
             model.prefix_cache.bytes / 2**20, sum(hits), len(hits))  # fmt: skip


def _steps_bf16(model: HybridRewardModel, precision: str) -> bool:
    """Whether the training steps will run under bf16 autocast (on the device the Trainer uses)."""
    steps_device = "cuda" if torch.cuda.is_available() else "cpu"
    return precision == "bf16" and model.device.type == steps_device


def _references(cfg, model, train_tok, eval_toks, cache, pad_id, precision) -> tuple[Any, list[Any], int]:
    """Reference log-probs for train (if the loss needs them) and every eval set (always, for the
    implicit head), through the frozen-prefix cache when it is on. The training side is computed
    the way the training steps compute the policy's (under their bf16 autocast, above the
    training set's frozen-prefix states, computed under the same autocast), so the policy starts
    equal to its reference, as DPO assumes; the eval side in fp32, like evaluation itself."""
    if not cfg.needs_reference:
        return None, [None] * len(eval_toks), 0
    fingerprint = model_fingerprint(model)
    pack = cfg.pack_length if cfg.packing else None
    train_bf16 = _steps_bf16(model, precision)
    prefix = model.prefix_cache.n_layers if model.prefix_cache is not None else 0

    def ref(tok: TokenizeResult, bf16: bool = False):
        key = fingerprint + (f":bf16-autocast:bf16-bottom={prefix}" if bf16 else "")
        with torch.autocast(model.device.type, torch.bfloat16, enabled=bf16):
            return reference_logps(model, tok.pairs, cache, pad_id, cfg.per_device_eval_batch_size, key, pack)

    results = ([ref(train_tok, train_bf16)] if cfg.needs_policy else []) + [ref(t) for t in eval_toks]
    hits = sum(r.hit for r in results)
    train_ref = results.pop(0).logps if cfg.needs_policy else None
    return train_ref, [r.logps for r in results], hits


def train(cfg: HafConfig, extra_eval: dict[str, list[PreferencePair]] | None = None, save: bool = True) -> TrainResult:
    """Run one training job as configured and return the held-out metrics.

    `extra_eval` names more pair sets that the final model is evaluated on (every head, in this
    process, with reference log-probs taken before training), returned in `TrainResult.extra_eval`.
    With `save=False` the final model is not written (metrics.json and data.json still are).
    """
    start = time.time()
    set_seed(cfg.seed)
    backbone, tokenizer, model_path = load_backbone(cfg.model, cfg.cache_dir)
    model = HybridRewardModel(backbone)
    model.logprob_chunk_size = cfg.logprob_chunk_size
    model.keep_logits_bytes = cfg.logprob_keep_mib * 2**20
    try:
        frozen = model.freeze_bottom(cfg.freeze_layers)
    except ValueError as e:
        raise ConfigError(f"freeze_layers: {e}") from None
    train_pairs, eval_pairs, data_reports = load_data(cfg)
    encoder = PairTokenizer(tokenizer, cfg.max_length, cfg.max_prompt_length, cfg.system_prompt)
    train_tok, eval_tok = encoder.tokenize(train_pairs), encoder.tokenize(eval_pairs)
    dropped = _report_drops("train", train_tok) | _report_drops("eval", eval_tok)
    if not train_tok.pairs or not eval_tok.pairs:
        raise DataError(f"no pairs left after tokenisation (dropped: {dropped or 'none'})")
    cache = cache_root(cfg.cache_dir)
    pad_id = tokenizer.pad_token_id
    extra_tok = {name: encoder.tokenize(pairs) for name, pairs in (extra_eval or {}).items()}
    for name, tok in extra_tok.items():
        dropped |= _report_drops(f"extra/{name}", tok)
        if not tok.pairs:
            raise DataError(f"extra eval set {name!r}: no pairs left after tokenisation")
    precision = resolve_precision(cfg.precision, "cuda" if torch.cuda.is_available() else "cpu")
    evals = [eval_tok, *extra_tok.values()]
    # before the references: they use it
    _prefix_cache(cfg, model, frozen, train_tok, evals, cache, pad_id, _steps_bf16(model, precision))
    train_ref, refs, hits = _references(cfg, model, train_tok, evals, cache, pad_id, precision)
    eval_ref = refs[0]
    meta = hafrm_meta(cfg, model_path, precision)
    eval_features = pair_features(eval_tok.pairs, eval_ref)
    trainer = HafTrainer(
        model=model,
        args=_training_args(cfg, len(train_tok.pairs)),
        train_dataset=pair_dataset(pair_features(train_tok.pairs, train_ref)),
        eval_dataset=eval_features,  # our evaluate() reads eval_pairs/eval_features directly
        data_collator=PairCollator(pad_id, pack_length=cfg.pack_length if cfg.packing else None),
        processing_class=tokenizer,
        haf_config=cfg,
        eval_pairs=eval_tok.pairs,
        eval_features=eval_features,
        pad_token_id=pad_id,
        hafrm_meta=meta,
        bf16_steps=precision == "bf16",
    )
    resume = get_last_checkpoint(cfg.output_dir) if cfg.resume and Path(cfg.output_dir).is_dir() else None
    trainer.train(resume_from_checkpoint=resume)
    result = trainer.final_eval()
    meta[STATS_KEY] = score_stats(result, f"eval split ({len(eval_tok.pairs)} pairs)")  # saved with the model
    if save:
        trainer.save_model(cfg.output_dir)
    extra = {
        name: evaluate_pairs(trainer.model, cfg, tok.pairs, pair_features(tok.pairs, ref), pad_id)
        for (name, tok), ref in zip(extra_tok.items(), refs[1:], strict=True)
    }
    metrics = {f"eval/{k}": v for k, v in result.metrics.items()}
    shortcut = shortcut_report(train_pairs, eval_pairs)  # how far surface cues alone get
    metrics["eval/shortcut/length_longer"] = shortcut.length_longer
    metrics["eval/shortcut/length_shorter"] = shortcut.length_shorter
    metrics["eval/shortcut/bag_of_words"] = shortcut.bag_of_words
    metrics["train/pairs"] = float(len(train_tok.pairs))
    metrics["train/steps"] = float(trainer.state.global_step)
    metrics["train/selected_step"] = float(trainer.selected_step)
    metrics["train/seconds"] = time.time() - start
    if model.prefix_cache is not None:  # how often the frozen layers' output was read, not computed
        pc = model.prefix_cache
        metrics |= {"train/prefix_cache/hits": float(pc.hits), "train/prefix_cache/misses": float(pc.misses)}
        model.prefix_cache = None  # a scorer of new text would only fill it
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    data_report = {"sources": [r.to_dict() for r in data_reports], "tokenisation": dropped}
    (out / "data.json").write_text(json.dumps(data_report, indent=2, sort_keys=True) + "\n")
    return TrainResult(
        out,
        metrics,
        result,
        len(train_tok.pairs),
        len(eval_tok.pairs),
        dropped,
        precision,
        time.time() - start,
        hits,
        history=dict(trainer.eval_history),
        log_history=list(trainer.state.log_history),
        extra_eval=extra,
        reward_model=RewardModel(trainer.model, tokenizer, meta, out),
    )


def hafrm_meta(cfg: HafConfig, model_path: str, precision: str) -> dict[str, Any]:
    """What `hafrm.load` needs to score with the right head, stored as hafrm_config.json."""
    return {
        "hafrm_version": __version__,
        "base_model": model_path,
        "mode": cfg.mode,
        "inference_head": cfg.mode_spec.inference_head,
        "loss": cfg.loss,
        "alpha": cfg.alpha,
        "beta": cfg.beta,
        "simpo_gamma": cfg.simpo_gamma,
        "system_prompt": cfg.system_prompt,
        "max_length": cfg.max_length,
        "max_prompt_length": cfg.max_prompt_length,
        "precision": precision,
        "train_config": {k: v for k, v in cfg.to_dict().items()},
    }
