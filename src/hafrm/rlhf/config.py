"""`hafrm rlhf`'s configuration: one dataclass whose field help is the CLI's help, loadable from YAML."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hafrm.config import check_fields, read_yaml_mapping
from hafrm.config import config_field as _f
from hafrm.errors import ConfigError
from hafrm.fileio import named_paths
from hafrm.modeling.backbone import DEFAULT_MODEL

GROUPS: dict[str, str] = {
    "model": "Policy and reward model",
    "prompts": "Prompts and the gold measurement",
    "rl": "Online RL (TRL's trainer)",
    "output": "Output",
}
TRAINERS = ("grpo", "rloo")  # TRL's GRPOTrainer, RLOOTrainer
PROTOCOLS = ("hafrm", "openrlhf")  # POST /score with (prompt, response); POST /get_reward with formatted texts
PRECISIONS = ("fp32", "bf16")


@dataclass(kw_only=True)
class RLHFConfig:
    """A policy trained online against one reward model (or each of several, compared), with
    greedy answers on held-out prompts scored by the reward model and by the gold verifiers."""

    # policy and reward model ---------------------------------------------------------------
    policy: str = _f(DEFAULT_MODEL, "The policy to train: a causal LM folder, a hafrm model folder (its LM "
                     "head), a .gguf file, or 'smollm2' (embedded).", group="model")  # fmt: skip
    reward_model: list[str] = _f(
        [], "A hafrm model folder or its seq-cls export, as DIR or NAME=DIR; several NAME=DIR run the same RL "
        "against each and compare them.", group="model",
    )  # fmt: skip
    reward_url: str | None = _f(None, "Instead of --reward-model: a running `hafrm serve` (or an OpenRLHF-protocol "
                                "server), e.g. http://127.0.0.1:8000.", group="model")  # fmt: skip
    reward_protocol: str = _f("hafrm", "How to ask --reward-url: 'hafrm' (POST /score, the server formats with the "
                              "reward model's template) or 'openrlhf' (POST /get_reward, texts formatted "
                              "with the policy's template).", group="model")  # fmt: skip
    reward_head: str | None = _f(None, "The head that scores (default: the reward model's own).", group="model")
    trust_remote_code: bool = _f(False, "Run the policy's and reward model's own Python code from their folders "
                                 "(only for models you trust).", group="model")  # fmt: skip
    freeze_layers: int = _f(0, "Freeze the policy's embeddings and its first N layers (negative: all but the last "
                            "-N); backward stops there: faster on CPU.", group="model")  # fmt: skip
    normalize: bool = _f(True, "Normalise rewards by the mean and std stored with the reward model, where it "
                         "has them (a hafrm folder).", group="model")  # fmt: skip
    # prompts ----------------------------------------------------------------------------------
    prompts: str = _f("builtin", "'builtin' (the built-in task's prompts the reward models were not trained on; "
                      "gold verifiers judge the answers) or a JSONL file of {\"prompt\": ...} lines.",
                      group="prompts")  # fmt: skip
    eval_prompts: int = _f(64, "Fixed prompts whose greedy answers are scored every eval_steps (never trained "
                           "on).", group="prompts")  # fmt: skip
    max_train_prompts: int | None = _f(None, "Use at most this many training prompts.", group="prompts")
    eval_steps: int = _f(10, "Score the greedy answers every this many steps (and before the first).",
                         group="prompts")  # fmt: skip
    # online RL --------------------------------------------------------------------------------
    trainer: str = _f("grpo", "TRL's online trainer: grpo (GRPOTrainer) or rloo (RLOOTrainer).", group="rl")
    max_steps: int = _f(40, "Optimizer steps.", group="rl")
    per_device_train_batch_size: int = _f(16, "Completions per step (prompts per step x num_generations).",
                                          group="rl")  # fmt: skip
    num_generations: int = _f(4, "Completions sampled per prompt (the group GRPO / RLOO compare within).", group="rl")
    max_new_tokens: int = _f(32, "Longest completion, in tokens (the built-in answers are a few).", group="rl")
    temperature: float = _f(1.0, "Sampling temperature of the training completions.", group="rl")
    learning_rate: float = _f(1e-5, "Peak learning rate.", group="rl")
    beta: float = _f(0.04, "KL coefficient to the reference (the initial policy); 0: no reference, no KL.",
                     group="rl")  # fmt: skip
    precision: str = _f("fp32", "fp32 or bf16 (on a CPU with AMX / avx512_bf16, or a GPU).", group="rl")
    seed: int = _f(0, "Random seed (prompt order, sampling, the policy's dropout).", group="rl")
    # output -----------------------------------------------------------------------------------
    output_dir: str = _f("runs/rlhf", "Where rlhf.json, the plot and the trained policy go.", group="output")
    save_policy: bool = _f(True, "Save the trained policy in output_dir/policy.", group="output")
    logging_steps: int = _f(1, "Log TRL's metrics every this many steps.", group="output")

    def __post_init__(self) -> None:
        _choice("trainer", self.trainer, TRAINERS)
        _choice("reward_protocol", self.reward_protocol, PROTOCOLS)
        _choice("precision", self.precision, PRECISIONS)
        if bool(self.reward_model) == bool(self.reward_url):
            raise ConfigError("give one of --reward-model (one or more) and --reward-url")
        for name in ("max_steps", "eval_steps", "eval_prompts", "num_generations", "max_new_tokens", "logging_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_generations < 2:
            raise ConfigError(f"num_generations must be >= 2 (GRPO and RLOO compare within a group), got "
                              f"{self.num_generations}")  # fmt: skip
        if self.per_device_train_batch_size % self.num_generations:
            raise ConfigError(
                f"per_device_train_batch_size ({self.per_device_train_batch_size}) must be a multiple of "
                f"num_generations ({self.num_generations})"
            )
        if self.beta < 0 or self.learning_rate <= 0 or self.temperature <= 0:
            raise ConfigError("beta must be >= 0, learning_rate and temperature > 0")
        self.reward_models()  # names checked now, not after the policy loaded

    def reward_models(self) -> dict[str, str]:
        """NAME -> DIR of --reward-model (a bare DIR is named 'rm'; a URL is named 'url')."""
        if self.reward_url:
            return {"url": self.reward_url}
        out = named_paths(self.reward_model, "--reward-model", lambda _: "rm")
        if len(out) > 1 and "rm" in out:
            raise ConfigError("several reward models need a NAME=DIR each")
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> RLHFConfig:
        check_fields(cls, values, source)
        if isinstance(values.get("reward_model"), dict):  # YAML: {name: dir}
            values = values | {"reward_model": [f"{k}={v}" for k, v in values["reward_model"].items()]}
        return cls(**values)

    @classmethod
    def from_yaml(cls, path: str | Path) -> RLHFConfig:
        return cls.from_dict(read_yaml_mapping(path), source=str(path))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _choice(name: str, value: str, accepted: tuple[str, ...]) -> None:
    if value not in accepted:
        raise ConfigError(f"unknown {name} {value!r}; accepted: {', '.join(accepted)}")
