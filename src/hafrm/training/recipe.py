"""`train(cfg)`: the model, the data, the caches (frozen-prefix states, then reference log-probs),
the fit, then the saved model and metrics: one stage function each, called in that order by
`train`, each taking what the stages before it return."""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import math
import resource
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from transformers import BitsAndBytesConfig, TrainingArguments, set_seed

from hafrm import distributed
from hafrm.config import SELECTION_METRICS, HafConfig
from hafrm.data.io import LoadReport, split_by_prompt, summary_line
from hafrm.data.shared import shares_prompt
from hafrm.data.sources import Source, read_sources
from hafrm.data.tokenize import PairCollator, PairTokenizer, TokenizeResult, pad_rows, pair_dataset, pair_features
from hafrm.data.types import PreferencePair
from hafrm.errors import ConfigError, DataError
from hafrm.evaluation.baselines import shortcut_report
from hafrm.evaluation.evaluate import EvalResult, evaluate_pairs, score_stats
from hafrm.evaluation.scoring import STATS_KEY, RewardModel
from hafrm.fileio import write_json_atomic
from hafrm.modeling.backbone import cache_root, load_backbone
from hafrm.modeling.hybrid import HybridRewardModel, position_ids_from_mask
from hafrm.modeling.prefix import PrefixCache, check_cached_forward, fill, fill_units
from hafrm.training.checkpoints import frozen_weights_match, last_checkpoint
from hafrm.training.precision import resolve_precision
from hafrm.training.reference import model_fingerprint, reference_logps
from hafrm.training.trainer import HafTrainer
from hafrm.version import __version__

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
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


def train(cfg: HafConfig, extra_eval: dict[str, list[PreferencePair]] | None = None, save: bool = True) -> TrainResult:
    """Run one training job as configured and return the held-out metrics.

    `extra_eval` names more pair sets that the final model is evaluated on (every head, in this
    process, with reference log-probs taken before training), returned in `TrainResult.extra_eval`.
    With `save=False` the final model is not written (metrics.json and data.json still are).
    """
    start = time.time()
    laps = Laps()
    distributed.init_process_group()  # launched with torchrun / accelerate launch: join its ranks
    if distributed.sharded_engine() and not torch.cuda.is_available():
        log.warning("%s needs GPUs: on CPU the Trainer trains with DDP instead", distributed.sharded_engine())
    resume_checkpoint(cfg)  # a checkpoint that cannot be resumed stops the run before the caches
    set_seed(cfg.seed)
    setup = setup_model(cfg)
    why = sharing_blocker(setup.model.config, cfg.max_length) if cfg.shares_prefixes else None
    if why:
        log.warning("prefix sharing off: %s", why)
        cfg = dataclasses.replace(cfg, prefix_sharing=False)
    data = setup_data(cfg, setup, extra_eval or {})
    precision = resolve_precision(cfg.precision, "cuda" if torch.cuda.is_available() else "cpu")
    laps.lap("model_and_data")
    prefix = setup_prefix_cache(cfg, setup, data, train_bf16=_steps_bf16(setup.model, precision))
    laps.lap("prefix_cache")
    refs = compute_references(cfg, setup, data, prefix, precision)
    laps.lap("reference")
    fitted = fit(cfg, setup, data, refs, precision)
    laps.lap("fit")
    return finalise(cfg, setup, data, refs, fitted, precision, start=start, save=save, laps=laps)


def resume_checkpoint(cfg: HafConfig) -> str | None:
    """The checkpoint a `--resume` run continues from (the newest complete one), or None."""
    resume = last_checkpoint(cfg.output_dir) if cfg.resume else None
    if resume and not (Path(resume) / "optimizer.pt").is_file():
        raise ConfigError(f"resume: {resume} holds the model only (saved with --save-only-model): it cannot be resumed")
    return resume


class Laps:
    """Seconds per phase of a run, for metrics.json (`train/seconds/<phase>`)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.time()

    def lap(self, phase: str) -> None:
        now = time.time()
        self.seconds[phase] = now - self._last
        self._last = now


# -------------------------------------------------------------------------------------- the model
@dataclass(frozen=True, kw_only=True)
class ModelSetup:
    model: HybridRewardModel
    tokenizer: Any
    path: str  # where the backbone was loaded from: the card's base_model
    frozen: int  # bottom decoder layers frozen

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id


def setup_model(cfg: HafConfig) -> ModelSetup:
    """The backbone with a zero-initialised reward head, its bottom `cfg.freeze_layers` frozen."""
    backbone = load_backbone(cfg.model, cfg.cache_dir, cfg.trust_remote_code, **quantization(cfg))
    model = HybridRewardModel(
        backbone.model, logprob_chunk_size=cfg.logprob_chunk_size, keep_logits_bytes=cfg.logprob_keep_mib * 2**20
    )
    try:
        frozen = model.freeze_bottom(cfg.freeze_layers)
        if cfg.lora_r > 0:  # adapters on the layers left trainable; the frozen ones stay plain (cacheable)
            n = model.add_adapters(frozen, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_target_modules,
                                   backbone.path)  # fmt: skip
            trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
            log.info("LoRA r=%d on %d modules of layers %d and up: %d trainable parameters", cfg.lora_r, n, frozen,
                     trained)  # fmt: skip
    except ValueError as e:
        raise ConfigError(f"{'lora' if cfg.lora_r > 0 and 'freeze' not in str(e) else 'freeze_layers'}: {e}") from None
    if cfg.gradient_checkpointing:  # transformers' own, per decoder layer (the trained ones recompute in backward)
        model.backbone.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    return ModelSetup(model=model, tokenizer=backbone.tokenizer, path=backbone.path, frozen=frozen)


def quantization(cfg: HafConfig) -> dict[str, Any]:
    """`from_pretrained` arguments that load the frozen backbone in 4 or 8 bits (QLoRA), or none.
    bitsandbytes quantises on CUDA only: elsewhere this is a clear error, not a slow fallback."""
    if not (cfg.load_in_4bit or cfg.load_in_8bit):
        return {}
    flag = "load_in_4bit" if cfg.load_in_4bit else "load_in_8bit"
    if not torch.cuda.is_available():
        raise ConfigError(f"{flag}: bitsandbytes quantisation needs a CUDA device, and this machine has none")
    if importlib.util.find_spec("bitsandbytes") is None:  # an optional dependency: only QLoRA needs it
        raise ConfigError(f"{flag}: needs the bitsandbytes package (pip install bitsandbytes)")
    if cfg.load_in_4bit:
        bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16,
                                 bnb_4bit_use_double_quant=True)  # fmt: skip
    else:
        bnb = BitsAndBytesConfig(load_in_8bit=True)
    return {"quantization_config": bnb, "device_map": {"": torch.cuda.current_device()}}


# --------------------------------------------------------------------------------------- the data
class DataSplit(NamedTuple):
    train_pairs: list[PreferencePair]
    eval_pairs: list[PreferencePair]
    reports: list[LoadReport]  # one per file or Hub source read (the built-in task has none)


def load_data(cfg: HafConfig) -> DataSplit:
    """Train and eval pairs from `cfg.data` / `cfg.eval_data` (items as `hafrm.data.sources` reads them).

    Each source is read with `cfg.data_options()` and capped; the mix is split by a hash of the
    prompt, so no prompt is on both sides. The reports account for every record read.
    """

    def read(items: Sequence[str]) -> list[Source]:
        sources = read_sources(items, cfg)
        for source in sources:
            if source.report is not None:
                log.warning("%s", summary_line(source.report))
        return sources

    train_sources = read(cfg.data)
    eval_sources = read(cfg.eval_data) if cfg.eval_data else []
    reports = [s.report for s in (*train_sources, *eval_sources) if s.report is not None]
    pairs = [p for s in train_sources for p in s.pairs]
    if eval_sources:
        return DataSplit(train_pairs=pairs, eval_pairs=[p for s in eval_sources for p in s.pairs], reports=reports)
    train_pairs, eval_pairs = split_by_prompt(pairs, cfg.eval_fraction, cfg.seed)
    if not train_pairs or not eval_pairs:
        raise DataError(f"{len(pairs)} pairs are too few to hold out an eval split of {cfg.eval_fraction}")
    return DataSplit(train_pairs=train_pairs, eval_pairs=eval_pairs, reports=reports)


@dataclass(frozen=True, kw_only=True)
class TrainData:
    split: DataSplit
    train_tok: TokenizeResult
    eval_tok: TokenizeResult
    extra_tok: dict[str, TokenizeResult]  # train(extra_eval=...), by name
    dropped: dict[str, int]  # "train/dropped/<source>/<why>", ".../truncated/...": as in data.json
    shared_pairs: int | None = None  # training pairs in the prefix-shared layout (None: sharing off)

    @property
    def eval_sets(self) -> list[TokenizeResult]:
        """The held-out split, then every extra set."""
        return [self.eval_tok, *self.extra_tok.values()]


def setup_data(cfg: HafConfig, setup: ModelSetup, extra_eval: dict[str, list[PreferencePair]]) -> TrainData:
    """The pairs, tokenised, and what tokenisation dropped or truncated (logged, and counted)."""
    split = load_data(cfg)
    encoder = PairTokenizer(setup.tokenizer, cfg.max_length, cfg.max_prompt_length, cfg.system_prompt)
    train_tok, eval_tok = encoder.tokenize(split.train_pairs), encoder.tokenize(split.eval_pairs)
    dropped = _report_drops("train", train_tok) | _report_drops("eval", eval_tok)
    if not train_tok.pairs or not eval_tok.pairs:
        raise DataError(f"no pairs left after tokenisation (dropped: {dropped or 'none'})")
    extra_tok = {name: encoder.tokenize(pairs) for name, pairs in extra_eval.items()}
    for name, tok in extra_tok.items():
        dropped |= _report_drops(f"extra/{name}", tok)
        if not tok.pairs:
            raise DataError(f"extra eval set {name!r}: no pairs left after tokenisation")
    shared = None
    if cfg.shares_prefixes:
        shared = sum(shares_prompt(p.chosen_ids, p.rejected_ids, p.chosen_prompt_len, p.rejected_prompt_len)
                     for p in train_tok.pairs)  # fmt: skip
        log.info("prefix sharing: %d of %d training pairs share their prompt tokens; the other %d run as two "
                 "sequences", shared, len(train_tok.pairs), len(train_tok.pairs) - shared)  # fmt: skip
    return TrainData(split=split, train_tok=train_tok, eval_tok=eval_tok, extra_tok=extra_tok, dropped=dropped,
                     shared_pairs=shared)  # fmt: skip


def _report_drops(name: str, res: TokenizeResult) -> dict[str, int]:
    for line in res.summary():
        log.warning("%s %s", name, line)
    counts = {f"{name}/dropped/{src or 'data'}/{why}": n for (src, why), n in res.dropped.items()}
    counts |= {f"{name}/truncated/{src or 'data'}/{what}": n for (src, what), n in res.truncated.items()}
    return counts


# ------------------------------------------------------------------------------------- the caches
def sliding_window(config: Any) -> int | None:
    """The attention window of the model's sliding-window layers, or None where every layer attends
    to the whole sequence."""
    text = config.get_text_config()
    window = getattr(text, "sliding_window", None)
    types = getattr(text, "layer_types", None)
    if types is not None:
        return window if "sliding_attention" in types else None
    return window if getattr(text, "use_sliding_window", True) else None


def sharing_blocker(config: Any, max_length: int) -> str | None:
    """Why prefix sharing cannot be used with this model, or None: its layout hands the backbone a
    mask of its own, which does not apply a sliding window (a window at least `max_length` long
    never bites)."""
    window = sliding_window(config)
    if window is not None and window < max_length:
        return (f"the model attends within a sliding window of {window} tokens (< max_length {max_length}), "
                "which the shared layout does not apply; pairs run as two sequences")  # fmt: skip
    return None


def prefix_blocker(cfg: HafConfig, model: HybridRewardModel) -> str | None:
    """Why the frozen-prefix cache cannot be used for this run, or None."""
    if distributed.world_size() == 1 and torch.cuda.device_count() > 1:
        return "the Trainer would spread one process over several GPUs (DataParallel): launch one process per GPU"
    engine = distributed.sharded_engine()
    if engine:
        return f"{engine} shards the frozen layers' weights across the ranks"
    checkpoint = last_checkpoint(cfg.output_dir) if cfg.resume else None
    if checkpoint and not frozen_weights_match(model, checkpoint):  # its states must be the checkpoint's
        return f"the frozen layers of {checkpoint} differ from the model's (trained with other --freeze-layers?)"
    text_config = model.config.get_text_config()
    dropout = {k: v for k, v in text_config.to_dict().items() if ("dropout" in k or "pdrop" in k) and v}
    if dropout:
        return f"the model has dropout ({dropout}), so its frozen layers are not deterministic in training"
    return None


@dataclass(frozen=True, kw_only=True)
class FrozenPrefix:
    """The frozen-prefix cache, attached to the model until `finalise` detaches it."""

    cache: PrefixCache | None  # None: off, the frozen layers run in every forward

    @property
    def n_layers(self) -> int:
        return 0 if self.cache is None else self.cache.n_layers


def setup_prefix_cache(cfg: HafConfig, setup: ModelSetup, data: TrainData, train_bf16: bool = False) -> FrozenPrefix:
    """Turn on the frozen-prefix cache (hafrm.modeling.prefix) when layers are frozen, after checking on
    a real batch that the cached path equals the full forward, and fill it from disk or once.

    The eval sets' states are computed in fp32 whatever training's precision: evaluation and
    scoring run in fp32, so the evaluation during training then equals a later `hafrm eval` of
    the saved model. With `train_bf16` the training set's states are computed under the bf16
    autocast of the training steps, as an uncached bf16 step computes them (about twice as fast
    as fp32 here); the eval sets are filled first, so a sequence in both keeps its fp32 states."""
    model, frozen = setup.model, setup.frozen
    if frozen <= 0 or cfg.prefix_cache_mib <= 0:
        return FrozenPrefix(cache=None)
    why = prefix_blocker(cfg, model)
    if why:
        log.warning("frozen-prefix cache off: %s", why)
        return FrozenPrefix(cache=None)
    toks = [*data.eval_sets, data.train_tok]
    hidden = model.config.get_text_config().hidden_size
    need = sum(u.tokens for tok in toks for u in fill_units(tok.pairs, cfg.shares_prefixes)) * hidden * 4
    if need > cfg.prefix_cache_mib * 2**20:
        log.warning("frozen-prefix cache off: %.0f MiB of states > prefix_cache_mib %d; the frozen layers run every "
                    "step", need / 2**20, cfg.prefix_cache_mib)  # fmt: skip
        return FrozenPrefix(cache=None)
    sequences = [s for tok in toks for p in tok.pairs for s in (p.chosen_ids, p.rejected_ids)]
    longest = sorted(sequences, key=len)[-4:]  # the longest: a sliding window or long-range rope shows there
    probe = pad_rows(longest, [0] * len(longest), setup.pad_id)
    mask = probe["attention_mask"]
    diff = check_cached_forward(model, frozen, probe["input_ids"], position_ids_from_mask(mask), mask)
    if not diff <= 1e-3:
        log.warning("frozen-prefix cache off: the cached path differs from the full forward by %.2g here", diff)
        return FrozenPrefix(cache=None)
    cache = PrefixCache(frozen, cfg.prefix_cache_mib * 2**20)
    model.attach_prefix_cache(cache)
    fingerprint = model_fingerprint(model)
    hits = []
    with distributed.main_first():  # several processes: each holds the cache; rank 0 fills the disk's
        for tok in toks:
            bf16 = train_bf16 and tok is data.train_tok
            key = fingerprint + (":bf16-autocast" if bf16 else "")
            with torch.autocast(model.device.type, torch.bfloat16, enabled=bf16):
                filled = fill(model, tok.pairs, cache_root(cfg.cache_dir), key, setup.pad_id, cfg.pack_length,
                              cfg.shares_prefixes)  # fmt: skip
            hits.append(filled.hit)
    log.info("frozen-prefix cache: %d sequences, %.0f MiB, %d of %d sets from disk", len(cache),
             cache.bytes / 2**20, sum(hits), len(hits))  # fmt: skip
    return FrozenPrefix(cache=cache)


def _steps_bf16(model: HybridRewardModel, precision: str) -> bool:
    """Whether the training steps will run under bf16 autocast (on the device the Trainer uses)."""
    steps_device = "cuda" if torch.cuda.is_available() else "cpu"
    return precision == "bf16" and model.device.type == steps_device


@dataclass(frozen=True, kw_only=True)
class References:
    """Reference log-probs, (N, 2) per set; None where the loss does not need them."""

    train: torch.Tensor | None
    eval: torch.Tensor | None  # the held-out split's
    extra: dict[str, torch.Tensor | None]  # each extra eval set's
    cache_hits: int  # sets read from the disk cache


def compute_references(
    cfg: HafConfig, setup: ModelSetup, data: TrainData, prefix: FrozenPrefix, precision: str
) -> References:
    """Reference log-probs for train (if the loss needs them) and every eval set (always, for the
    implicit head), through the frozen-prefix cache when it is on. The training side is computed
    the way the training steps compute the policy's (under their bf16 autocast, above the
    training set's frozen-prefix states, computed under the same autocast), so the policy starts
    equal to its reference, as DPO assumes; the eval side in fp32, like evaluation itself."""
    if not cfg.needs_reference:
        return References(train=None, eval=None, extra=dict.fromkeys(data.extra_tok), cache_hits=0)
    model = setup.model
    fingerprint = model_fingerprint(model)
    pack = cfg.pack_length if cfg.packing else None
    cache = cache_root(cfg.cache_dir)

    def ref(tok: TokenizeResult, bf16: bool = False):
        key = fingerprint + (f":bf16-autocast:bf16-bottom={prefix.n_layers}" if bf16 else "")
        with torch.autocast(model.device.type, torch.bfloat16, enabled=bf16):
            return reference_logps(model, tok.pairs, cache, setup.pad_id, cfg.per_device_eval_batch_size, key, pack,
                                   prefix_sharing=cfg.shares_prefixes)  # fmt: skip

    # the training side as the training steps run (their autocast); both sides in the steps' layout
    train_ref = ref(data.train_tok, _steps_bf16(model, precision)) if cfg.needs_policy else None
    eval_ref, *extra_refs = [ref(tok) for tok in data.eval_sets]
    return References(
        train=None if train_ref is None else train_ref.logps,
        eval=eval_ref.logps,
        extra={name: r.logps for name, r in zip(data.extra_tok, extra_refs, strict=True)},
        cache_hits=sum(r.hit for r in (train_ref, eval_ref, *extra_refs) if r is not None),
    )


# ---------------------------------------------------------------------------------------- the fit
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
        report_to=[r.strip() for r in cfg.report_to.split(",") if r.strip() != "none"] or "none",
        run_name=Path(cfg.output_dir).name,
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
        save_only_model=cfg.save_only_model,
        # several processes on CPU: the Trainer's accelerate state takes the gloo group (else it sees one process)
        use_cpu=distributed.world_size() > 1 and not torch.cuda.is_available(),
    )


@dataclass(frozen=True, kw_only=True)
class Fit:
    trainer: HafTrainer
    result: EvalResult  # the final model's, on the held-out split
    card: dict[str, Any]  # the model card the trainer saves (see `model_card`)


def fit(cfg: HafConfig, setup: ModelSetup, data: TrainData, refs: References, precision: str) -> Fit:
    """Train (or resume) with the Trainer, then evaluate the model it ends with."""
    card = model_card(cfg, setup.path, precision)
    eval_features = pair_features(data.eval_tok.pairs, refs.eval)
    trainer = HafTrainer(
        model=setup.model,
        args=_training_args(cfg, len(data.train_tok.pairs)),
        train_dataset=pair_dataset(pair_features(data.train_tok.pairs, refs.train)),
        eval_dataset=eval_features,  # our evaluate() reads eval_pairs/eval_features directly
        data_collator=PairCollator(
            setup.pad_id, pack_length=cfg.pack_length if cfg.packing else None, prefix_sharing=cfg.shares_prefixes
        ),
        processing_class=setup.tokenizer,
        train_config=cfg,
        eval_pairs=data.eval_tok.pairs,
        eval_features=eval_features,
        pad_token_id=setup.pad_id,
        model_card=card,
        bf16_steps=precision == "bf16",
        train_pairs=data.train_tok.pairs,
    )
    resume = resume_checkpoint(cfg)
    trainer.train(resume_from_checkpoint=resume)
    return Fit(trainer=trainer, result=trainer.final_eval(), card=card)


def model_card(cfg: HafConfig, model_path: str, precision: str) -> dict[str, Any]:
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


# ----------------------------------------------------------------------------------- the results
def finalise(
    cfg: HafConfig,
    setup: ModelSetup,
    data: TrainData,
    refs: References,
    fitted: Fit,
    precision: str,
    *,
    start: float,
    save: bool,
    laps: Laps | None = None,
) -> TrainResult:
    """Save the model with its score statistics, evaluate it on the extra sets, and write
    metrics.json and data.json (with the seconds of each phase in `laps`, if given)."""
    trainer, result = fitted.trainer, fitted.result
    # into the dict the trainer was given, which it saves
    fitted.card[STATS_KEY] = score_stats(result, f"eval split ({len(data.eval_tok.pairs)} pairs)")
    if save:
        trainer.save_model(cfg.output_dir)
    extra = {
        name: evaluate_pairs(trainer.model, cfg, tok.pairs, pair_features(tok.pairs, refs.extra[name]), setup.pad_id)
        for name, tok in data.extra_tok.items()
    }
    prefix_cache = setup.model.detach_prefix_cache()  # a scorer of new text would only fill it
    metrics = _final_metrics(data, trainer, result, prefix_cache, start)
    if laps is not None:  # model and data, frozen-prefix fill, reference pass, the fit; then this
        laps.lap("save_and_extra_eval")
        metrics |= {f"train/seconds/{phase}": t for phase, t in laps.seconds.items()}
        log.info("seconds: %s", ", ".join(f"{phase} {t:.0f}" for phase, t in laps.seconds.items()))
    out = Path(cfg.output_dir)
    if distributed.is_main():
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / "metrics.json", metrics)
        sources = [r.to_dict() for r in data.split.reports]
        write_json_atomic(out / "data.json", {"sources": sources, "tokenisation": data.dropped})
    return TrainResult(
        output_dir=out,
        metrics=metrics,
        eval_result=result,
        train_pairs=len(data.train_tok.pairs),
        eval_pairs=len(data.eval_tok.pairs),
        dropped=data.dropped,
        precision=precision,
        seconds=time.time() - start,
        reference_cache_hits=refs.cache_hits,
        history=dict(trainer.eval_history),
        log_history=list(trainer.state.log_history),
        extra_eval=extra,
        reward_model=RewardModel(trainer.model, setup.tokenizer, fitted.card, out),
    )


def _final_metrics(
    data: TrainData, trainer: HafTrainer, result: EvalResult, prefix_cache: PrefixCache | None, start: float
) -> dict[str, float]:
    """metrics.json: the final eval, the surface-cue baselines on the same split, the run's counts."""
    shortcut = shortcut_report(data.split.train_pairs, data.split.eval_pairs)  # how far surface cues alone get
    metrics = {f"eval/{k}": v for k, v in result.metrics.items()}
    metrics |= {
        "eval/shortcut/length_longer": shortcut.length_longer,
        "eval/shortcut/length_shorter": shortcut.length_shorter,
        "eval/shortcut/bag_of_words": shortcut.bag_of_words,
        "train/pairs": float(len(data.train_tok.pairs)),
        "train/steps": float(trainer.state.global_step),
        "train/selected_step": float(trainer.selected_step),
        "train/seconds": time.time() - start,
        "train/peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # this process (Linux: KiB)
        "train/trainable_parameters": float(sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)),
    }
    if torch.cuda.is_available():
        metrics["train/peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
    if data.shared_pairs is not None:  # the rest ran as two sequences
        metrics["train/prefix_sharing/shared_pairs"] = float(data.shared_pairs)
        metrics["train/prefix_sharing/unshared_pairs"] = float(len(data.train_tok.pairs) - data.shared_pairs)
    if prefix_cache is not None:  # how often the frozen layers' output was read, not computed
        metrics |= {
            "train/prefix_cache/hits": float(prefix_cache.hits),
            "train/prefix_cache/misses": float(prefix_cache.misses),
            "train/prefix_cache/mib": prefix_cache.bytes / 2**20,
        }
    return metrics
