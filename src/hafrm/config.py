"""Training configuration: one dataclass whose field help is the only help text (CLI included)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hafrm.data.formats import FORMATS, PKU_LABELS, DataOptions, parse_mapping
from hafrm.errors import ConfigError, DataError
from hafrm.modeling.backbone import DEFAULT_MODEL
from hafrm.objectives.haf import ALPHA_SCHEDULES, AUTO_ALPHA
from hafrm.objectives.losses import POLICY_LOSSES


@dataclass(frozen=True, kw_only=True)
class ModeSpec:
    """How a training mode weighs the two losses and which head scores at inference."""

    reward_weight: float
    uses_alpha: bool  # policy weight = alpha if True, else `policy_weight`
    policy_weight: float
    inference_head: str  # "reward" or "implicit"
    help: str


MODES: dict[str, ModeSpec] = {
    "hybrid": ModeSpec(
        reward_weight=1.0, uses_alpha=True, policy_weight=0.0, inference_head="reward",
        help="HaF: BT + alpha * policy loss (default)",
    ),
    "reward": ModeSpec(
        reward_weight=1.0, uses_alpha=False, policy_weight=0.0, inference_head="reward",
        help="Baseline reward model: BT only (alpha 0)",
    ),
    "dpo": ModeSpec(
        reward_weight=0.0, uses_alpha=False, policy_weight=1.0, inference_head="implicit",
        help="policy loss only; scored by beta*(logp-ref)",
    ),
}  # fmt: skip

# Checkpoint selection (the paper compares these): metric -> greater is better. "step" keeps
# the last checkpoint. All are computed on the eval split with the mode's inference head.
SELECTION_METRICS: dict[str, bool | None] = {
    "accuracy": True,
    "reward": True,
    "margin": True,
    "loss": False,
    "step": None,
}

PRECISIONS = ("auto", "fp32", "bf16")


# The concerns HafConfig's fields are grouped by (`hafrm train --help` shows one panel each).
GROUPS: dict[str, str] = {
    "model": "Model and method",
    "lora": "LoRA / QLoRA adapters",
    "loss": "Loss",
    "data": "Data",
    "optimisation": "Optimisation",
    "speed": "Speed, memory and caches",
    "output": "Output, evaluation and checkpoints",
}


REPORT_TO = ("none", "tensorboard", "wandb")  # the Trainer integrations hafrm offers


def config_field(default: Any, help: str, *, group: str, source: bool = False, cell: bool = False) -> Any:
    """A config dataclass field (HafConfig's and the other commands'). `source`: how every data
    source is read (`data_options`); `cell`: the run's own data, seed, folder and checkpoints,
    which each experiment cell sets itself."""
    metadata = {"help": help, "group": group, "source": source, "cell": cell}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


_f = config_field


@dataclass(kw_only=True)
class HafConfig:
    """Everything a training run needs, as flat fields (YAML keys, `HafConfig(field=...)` and
    `hafrm train --field` alike), each in one of GROUPS. Build from YAML with `HafConfig.from_yaml`."""

    # model and method ---------------------------------------------------------------------
    model: str = _f(DEFAULT_MODEL, "Local folder or Hub id of a causal LM; 'smollm2' = embedded.", group="model")
    trust_remote_code: bool = _f(
        False, "Run the model's own Python code from its folder or the Hub (only for models you trust).", group="model"
    )
    mode: str = _f("hybrid", f"Training mode: {', '.join(MODES)}.", group="model")
    freeze_layers: int = _f(
        -10,
        "Freeze the input embeddings and the bottom N decoder layers; negative N freezes all but the top |N| "
        "(-10: train the top 10 layers, whatever the depth); 0 = train everything.",
        group="model",
    )
    # LoRA -----------------------------------------------------------------------------------
    lora_r: int = _f(
        0,
        "LoRA rank: adapters (peft) on the layers --freeze-layers leaves trainable, the backbone's own weights "
        "frozen; 0 = no adapters.",
        group="lora",
    )
    lora_alpha: float = _f(16.0, "LoRA scaling numerator (the update is scaled by alpha / r).", group="lora")
    lora_dropout: float = _f(0.0, "Dropout on the adapters' input.", group="lora")
    lora_target_modules: list[str] = _f(
        ["all-linear"], "Module names the adapters go on (peft's target_modules); 'all-linear' = every linear "
        "layer but the LM head.", group="lora",
    )  # fmt: skip
    load_in_4bit: bool = _f(False, "QLoRA: the frozen backbone in 4-bit NF4 (bitsandbytes, CUDA only).", group="lora")
    load_in_8bit: bool = _f(False, "The frozen backbone in 8-bit (bitsandbytes, CUDA only).", group="lora")
    # loss -----------------------------------------------------------------------------------
    loss: str = _f("sigmoid", f"Policy loss: {', '.join(POLICY_LOSSES)}.", group="loss")
    alpha: float | str = _f(
        0.2,
        f"Weight of the policy loss in hybrid mode (>= 0), or '{AUTO_ALPHA}': the ratio of the running mean "
        "losses, BT / policy (uncertainty weighting at its optimum).",
        group="loss",
    )
    alpha_schedule: str = _f(
        "constant",
        "How alpha moves over training: constant, warmup (0 up to alpha) or decay (alpha down to 0).",
        group="loss",
    )
    beta: float = _f(0.1, "Policy-loss temperature; implicit reward = beta*(logp - ref).", group="loss")
    simpo_gamma: float = _f(0.5, "SimPO target margin gamma (loss 'simpo' only).", group="loss")
    use_margin: bool = _f(False, "Subtract each pair's `margin` field inside the BT loss.", group="loss")
    center_rewards_coefficient: float = _f(0.0, "Weight of the reward-centering loss (r_w+r_l)^2.", group="loss")
    # data -----------------------------------------------------------------------------------
    data: list[str] = _f(
        ["builtin"],
        "Training data: 'builtin' (or 'builtin:SKILL,...'), files (.jsonl/.json/.parquet/.csv, .gz too) "
        "or Hub ids; repeat to mix.",
        group="data",
        cell=True,
    )
    eval_data: list[str] = _f(
        [], "Eval data (as --data); default: a held-out split of --data.", group="data", cell=True
    )
    data_format: str | None = _f(
        None, "Format of every data source (default: detected per source).", group="data", source=True
    )
    data_map: list[str] = _f(
        [], "Field mapping TARGET=FIELD (e.g. chosen=answers.0), repeatable.", group="data", source=True
    )
    on_error: str = _f(
        "raise",
        "Bad records: 'raise' (stop, naming file:line and field) or 'skip' (count them).",
        group="data",
        source=True,
    )
    max_pairs_per_source: int | None = _f(
        None, "Cap on pairs taken from each source (a seeded sample).", group="data", source=True
    )
    pku_label: str = _f("safer", "PKU-SafeRLHF native label: 'safer' or 'better'.", group="data", source=True)
    pku_safety_filter: bool = _f(
        False, "PKU-SafeRLHF native: keep only pairs where exactly one response is safe.", group="data", source=True
    )
    eval_fraction: float = _f(0.2, "Held-out share when eval data is split from --data.", group="data")
    builtin_pairs: int = _f(
        1600,
        "Pairs generated for the built-in task (before the split); 'builtin:SKILL' takes that skill's share.",
        group="data",
    )
    system_prompt: str | None = _f(None, "System message prepended to every prompt, if set.", group="data")
    max_length: int = _f(
        512,
        "Max tokens per sequence; longer responses are cut, keeping the tokens that close the turn.",
        group="data",
    )
    max_prompt_length: int = _f(256, "Max prompt tokens (< max_length); longer prompts keep their end.", group="data")
    # optimisation ---------------------------------------------------------------------------
    learning_rate: float = _f(
        1e-4, "Peak learning rate of the backbone (1e-4 suits 135M; use ~1e-5 for 1B+).", group="optimisation"
    )
    reward_head_learning_rate: float | None = _f(
        1e-3,
        "Reward-head LR; it starts at zero, so it needs far more than the backbone. None = learning_rate.",
        group="optimisation",
    )
    weight_decay: float = _f(0.0, "AdamW weight decay.", group="optimisation")
    warmup_ratio: float = _f(0.05, "Share of steps for linear warm-up.", group="optimisation")
    lr_scheduler_type: str = _f("cosine", "transformers scheduler name.", group="optimisation")
    per_device_train_batch_size: int = _f(8, "Pairs per micro-batch (2x sequences).", group="optimisation")
    gradient_accumulation_steps: int = _f(1, "Micro-batches per optimizer step.", group="optimisation")
    num_train_epochs: float = _f(
        3.0, "Epochs over the training pairs (ignored if max_steps > 0).", group="optimisation"
    )
    max_steps: int = _f(-1, "Total optimizer steps; -1 = use num_train_epochs.", group="optimisation")
    max_grad_norm: float = _f(1.0, "Gradient clipping norm.", group="optimisation")
    seed: int = _f(42, "Random seed (data order, init, built-in task).", group="optimisation", cell=True)
    # speed, memory and caches (packing and length grouping also change what a batch holds) ---
    precision: str = _f(
        "auto",
        "fp32, bf16, or auto (bf16 on a CUDA device that supports it, and on a CPU where a short matmul "
        "probe at start-up picks it).",
        group="speed",
    )
    per_device_eval_batch_size: int = _f(16, "Pairs per eval batch.", group="speed")
    logprob_chunk_size: int = _f(512, "Response positions per LM-head chunk.", group="speed")
    logprob_keep_mib: int = _f(
        512,
        "Response logits kept for backward up to this many MiB; beyond, chunks are recomputed (less memory).",
        group="speed",
    )
    packing: bool = _f(
        True, "Pack each batch's sequences into rows without padding (block-causal attention).", group="speed"
    )
    pack_length: int = _f(
        1024, "Tokens per packed row (with --packing); a longer sequence gets its own row.", group="speed"
    )
    group_by_length: bool = _f(
        True,
        "Batch pairs of similar length (the Trainer's length-grouped sampler; less padding without --packing). "
        "Off: batches drawn at random (with the built-in task, length-sorted batches are sorted by skill too).",
        group="speed",
    )
    prefix_sharing: bool = _f(
        True,
        "With --packing: pack each pair as one segment [prompt | chosen | rejected], so the training steps, "
        "evaluation, the reference passes and the frozen-prefix cache compute and hold its prompt once (exact). "
        "Pairs whose prompt tokens differ run as two sequences (counted).",
        group="speed",
    )
    prefix_cache_mib: int = _f(
        4096,
        "With frozen layers: memory for their output per sequence, computed once per data set "
        "(and kept on disk), so each step runs only the layers above (0 = off; a larger set runs them every step).",
        group="speed",
    )
    gradient_checkpointing: bool = _f(
        False,
        "Recompute each trained layer's activations in backward instead of keeping them (transformers' "
        "gradient checkpointing): less memory, about a third more compute.",
        group="speed",
    )
    cache_dir: str | None = _f(
        None, "Cache for models, reference log-probs and frozen-prefix states (~/.cache/hafrm).", group="speed"
    )
    # output, evaluation and checkpoints -----------------------------------------------------
    output_dir: str = _f("runs/hafrm", "Where checkpoints, the final model and metrics go.", group="output", cell=True)
    eval_steps: int | None = _f(None, "Evaluate every N steps (default: twice per run).", group="output", cell=True)
    save_steps: int | None = _f(None, "Checkpoint every N steps (default: eval_steps).", group="output", cell=True)
    save_total_limit: int = _f(2, "Checkpoints kept on disk (the best is always kept).", group="output")
    save_only_model: bool = _f(
        False,
        "Checkpoints hold the model only (no optimizer, scheduler or RNG states): smaller, but not resumable.",
        group="output",
    )
    select_by: str = _f(
        "accuracy", f"Keep the checkpoint best by: {', '.join(SELECTION_METRICS)}.", group="output", cell=True
    )
    logging_steps: int = _f(5, "Log training metrics every N steps.", group="output")
    report_to: str = _f(
        "none",
        "Where the Trainer also logs: none, tensorboard (event files under output_dir/runs), wandb, or both "
        "comma-separated (its own integrations; wandb reads WANDB_MODE, WANDB_PROJECT, ...).",
        group="output",
    )
    resume: bool = _f(False, "Resume from the last checkpoint in output_dir.", group="output", cell=True)

    def __post_init__(self) -> None:
        self.validate()

    # derived ---------------------------------------------------------------------------
    @property
    def mode_spec(self) -> ModeSpec:
        return MODES[self.mode]

    @property
    def reward_weight(self) -> float:
        return self.mode_spec.reward_weight

    @property
    def policy_weight(self) -> float:
        spec = self.mode_spec
        if not spec.uses_alpha:
            return spec.policy_weight
        return 1.0 if self.auto_alpha else float(self.alpha)  # under auto, the objective's ratio multiplies it

    @property
    def auto_alpha(self) -> bool:
        """Whether alpha is set from the losses as training goes (`alpha: auto`)."""
        return self.alpha == AUTO_ALPHA

    @property
    def needs_policy(self) -> bool:
        return self.policy_weight > 0

    @property
    def shares_prefixes(self) -> bool:
        """Whether the training steps run in the prefix-shared layout (it packs: it needs packing)."""
        return self.prefix_sharing and self.packing

    @property
    def needs_reference(self) -> bool:
        return POLICY_LOSSES[self.loss].needs_reference

    def validate(self) -> None:
        _choice("mode", self.mode, MODES)
        _choice("loss", self.loss, POLICY_LOSSES)
        _choice("select_by", self.select_by, SELECTION_METRICS)
        _choice("precision", self.precision, PRECISIONS)
        _choice("alpha_schedule", self.alpha_schedule, dict.fromkeys(ALPHA_SCHEDULES))
        if isinstance(self.alpha, str) and not self.auto_alpha:
            raise ConfigError(f"alpha must be a number >= 0 or '{AUTO_ALPHA}', got {self.alpha!r}")
        if not self.auto_alpha and self.alpha < 0:
            raise ConfigError(f"alpha must be >= 0, got {self.alpha}")
        if self.beta <= 0:
            raise ConfigError(f"beta must be > 0, got {self.beta}")
        for name in ("per_device_train_batch_size", "gradient_accumulation_steps", "max_length", "pack_length"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lora_r < 0:
            raise ConfigError(f"lora_r must be >= 0, got {self.lora_r}")
        if (self.load_in_4bit or self.load_in_8bit) and self.lora_r == 0:
            raise ConfigError("load_in_4bit / load_in_8bit quantise the frozen backbone: they need adapters (--lora-r)")
        if self.load_in_4bit and self.load_in_8bit:
            raise ConfigError("load_in_4bit and load_in_8bit: choose one")
        unknown = [r for r in self.report_to.split(",") if r.strip() not in REPORT_TO]
        if unknown:
            raise ConfigError(f"report_to: {unknown} unknown; accepted: {', '.join(REPORT_TO)} (comma-separated)")
        if self.prefix_cache_mib < 0:
            raise ConfigError(f"prefix_cache_mib must be >= 0, got {self.prefix_cache_mib}")
        if not 0 < self.eval_fraction < 1:
            raise ConfigError(f"eval_fraction must be in (0, 1), got {self.eval_fraction}")
        self._validate_data()

    def _validate_data(self) -> None:
        if not self.data:
            raise ConfigError("data is empty: give 'builtin' or at least one file")
        if not 0 < self.max_prompt_length < self.max_length:
            raise ConfigError(
                f"max_prompt_length must be >= 1 and < max_length ({self.max_length}), got {self.max_prompt_length}"
            )
        self.data_options()

    def data_options(self) -> DataOptions:
        """How every data source of this run is read (checked by `read_options`)."""
        return read_options(**{name: getattr(self, name) for name in self.fields_in(source=True)}, seed=self.seed)

    # groups ----------------------------------------------------------------------------------
    @classmethod
    def fields_in(cls, group: str | None = None, **metadata: Any) -> tuple[str, ...]:
        """The names of the fields of `group` (None: every group) whose metadata has these values
        (e.g. `source=True`), in class order."""
        if group is not None and group not in GROUPS:
            raise ConfigError(f"unknown field group {group!r}; accepted: {', '.join(GROUPS)}")
        return tuple(
            f.name
            for f in dataclasses.fields(cls)
            if group in (None, f.metadata["group"]) and all(f.metadata[k] == v for k, v in metadata.items())
        )

    def group_dict(self, group: str) -> dict[str, Any]:
        """The values of one group's fields, e.g. `cfg.group_dict("data")`."""
        return {name: getattr(self, name) for name in self.fields_in(group)}

    # construction ----------------------------------------------------------------------
    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> HafConfig:
        check_fields(cls, values, source)
        return cls(**values)

    @classmethod
    def from_yaml(cls, path: str | Path) -> HafConfig:
        return cls.from_dict(read_yaml_mapping(path), source=str(path))

    def replace(self, **changes: Any) -> HafConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def check_fields(cls: type, values: dict[str, Any], source: str) -> None:
    """ConfigError naming `source` if `values` has a key that is no field of the dataclass `cls`."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{source}: unknown field(s) {unknown}; accepted: {sorted(known)}")


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """A config file's `field: value` mapping; ConfigError naming the file if it is missing or not one."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of field: value")
    return values


def read_options(
    *,
    data_format: str | None = None,
    data_map: list[str] | tuple[str, ...] = (),
    on_error: str = "raise",
    max_pairs_per_source: int | None = None,
    pku_label: str = "safer",
    pku_safety_filter: bool = False,
    seed: int = 0,
) -> DataOptions:
    """The options a data source is read with, from HafConfig's fields of the same names, checked:
    the one check of them, for `hafrm train` and every command that reads data."""
    _choice("on_error", on_error, dict.fromkeys(("raise", "skip")))
    if data_format is not None:
        _choice("data_format", data_format, FORMATS)
    _choice("pku_label", pku_label, dict.fromkeys(PKU_LABELS))
    if max_pairs_per_source is not None and max_pairs_per_source < 1:
        raise ConfigError(f"max_pairs_per_source must be >= 1, got {max_pairs_per_source}")
    try:
        mapping = parse_mapping(data_map)
    except DataError as e:
        raise ConfigError(str(e)) from None
    return DataOptions(
        format=data_format,
        mapping=mapping,
        on_error=on_error,
        pku_label=pku_label,
        pku_safety_filter=pku_safety_filter,
        max_pairs=max_pairs_per_source,
        seed=seed,
    )


def field_help(name: str) -> str:
    """The help text of a HafConfig field (the CLI's only source of help)."""
    return HafConfig.__dataclass_fields__[name].metadata["help"]


def field_group(name: str) -> str:
    """The group (a key of GROUPS) of a HafConfig field."""
    return HafConfig.__dataclass_fields__[name].metadata["group"]


def _choice(name: str, value: str, accepted: dict) -> None:
    if value not in accepted:
        raise ConfigError(f"unknown {name} {value!r}; accepted: {', '.join(accepted)}")
