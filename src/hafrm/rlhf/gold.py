"""The prompts an RL run trains and is measured on, greedy answers, and the gold verifiers' verdicts."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import zip_longest
from pathlib import Path
from typing import Any, NamedTuple

import torch

from hafrm.config import HafConfig
from hafrm.data import builtin
from hafrm.data.io import split_by_prompt
from hafrm.data.sources import builtin_pairs, builtin_skills
from hafrm.errors import ConfigError, DataError, HafError
from hafrm.modeling.hybrid import HAFRM_CONFIG_FILE

log = logging.getLogger(__name__)


class RLPrompt(NamedTuple):
    messages: list[dict[str, str]]
    skill: str | None = None  # the built-in task's skill, for the per-skill gold rate
    spec: dict[str, Any] | None = None  # what builtin.is_correct judges an answer against


@dataclass(kw_only=True)
class PromptSplit:
    train: list[RLPrompt]
    eval: list[RLPrompt]
    excluded: int = 0  # built-in prompts left out because a reward model was trained on them
    notes: list[str] = field(default_factory=list)


def _key(messages: list[dict[str, str]]) -> str:
    return json.dumps(messages, sort_keys=True)


def trained_prompts(model_dir: str | Path | None) -> tuple[set[str] | None, HafConfig]:
    """The built-in prompts a hafrm model folder was trained on (None: it cannot tell, e.g. an
    export, a server or no folder) and its training config (defaults where unknown)."""
    card = Path(model_dir) / HAFRM_CONFIG_FILE if model_dir else None
    if card is None or not card.is_file():
        return None, HafConfig()
    values = dict(json.loads(card.read_text()).get("train_config") or {})
    values.pop("resume", None)
    try:
        cfg = HafConfig.from_dict(values, source=str(card))
    except HafError as e:
        raise HafError(f"{model_dir}: cannot read its training config: {e}") from None
    seen: set[str] = set()
    for item in cfg.data:
        skills = builtin_skills(item)
        if skills is None:
            continue
        pairs = builtin_pairs(cfg, skills)
        train = pairs if cfg.eval_data else split_by_prompt(pairs, cfg.eval_fraction, cfg.seed)[0]
        seen |= {_key(p.prompt) for p in train}
    return seen, cfg


def builtin_prompt_split(model_dirs: Sequence[str | None], n_eval: int, max_train: int | None) -> PromptSplit:
    """The built-in prompts none of the reward models was trained on: `n_eval` of them, the skills
    in equal shares, are the fixed evaluation set, the rest the training prompts. A model
    whose training prompts are unknown (a URL, an export: None), or no model, leaves the held-out
    side of the default training split."""
    notes, excluded_keys, cfg = [], set(), None
    for path in model_dirs or [None]:
        seen, rm_cfg = trained_prompts(path)
        cfg = cfg or rm_cfg
        if seen is None:
            default = HafConfig()
            pairs = builtin_pairs(default)
            seen = {_key(p.prompt) for p in split_by_prompt(pairs, default.eval_fraction, default.seed)[0]}
            if path is not None:
                notes.append(f"{path}: its training prompts are unknown; the default split's training side is left out")
        excluded_keys |= seen
    pool, seen_keys = [], set()
    for p in builtin_pairs(cfg or HafConfig()):
        key = _key(p.prompt)
        if key not in seen_keys:
            seen_keys.add(key)
            pool.append(RLPrompt(p.prompt, p.meta["skill"], p.meta["spec"]))
    kept = [p for p in pool if _key(p.messages) not in excluded_keys]
    if len(kept) <= n_eval:
        raise ConfigError(f"only {len(kept)} built-in prompts are held out from the reward model(s); "
                          f"eval_prompts ({n_eval}) must be fewer")  # fmt: skip
    by_skill: dict[str | None, list[RLPrompt]] = {}
    for p in kept:
        by_skill.setdefault(p.skill, []).append(p)
    interleaved = [p for group in zip_longest(*by_skill.values()) for p in group if p is not None]
    eval_set = interleaved[:n_eval]  # the skills in equal shares
    chosen = {_key(p.messages) for p in eval_set}
    train = [p for p in kept if _key(p.messages) not in chosen]
    return PromptSplit(train=train if max_train is None else train[:max_train], eval=eval_set,
                       excluded=len(pool) - len(kept), notes=notes)  # fmt: skip


def file_prompt_split(path: str | Path, n_eval: int, max_train: int | None) -> PromptSplit:
    """A JSONL file of {"prompt": text or messages} lines: the first `n_eval` are the evaluation
    set (no gold verdicts), the rest the training prompts."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"prompts file {path} does not exist")
    prompts = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{number}: not JSON: {e.msg}") from None
        prompt = record.get("prompt") if isinstance(record, dict) else None
        if isinstance(prompt, str) and prompt.strip():
            prompts.append(RLPrompt([{"role": "user", "content": prompt}]))
        elif isinstance(prompt, list) and prompt and all(isinstance(m, dict) and {"role", "content"} <= set(m)
                                                         for m in prompt):  # fmt: skip
            prompts.append(RLPrompt([{"role": m["role"], "content": m["content"]} for m in prompt]))
        else:
            raise DataError(f"{path}:{number}: field 'prompt': expected a non-empty string or a list of "
                            "{role, content} messages")  # fmt: skip
    if len(prompts) <= n_eval:
        raise DataError(f"{path}: {len(prompts)} prompts; eval_prompts ({n_eval}) must be fewer")
    train = prompts[n_eval:]
    return PromptSplit(train=train if max_train is None else train[:max_train], eval=prompts[:n_eval])


@torch.no_grad()
def greedy_answers(model: Any, tokenizer: Any, prompts: Sequence[RLPrompt], max_new_tokens: int,
                   batch_size: int = 16) -> list[str]:  # fmt: skip
    """The policy's greedy answer to each prompt (its own chat template, left-padded batches)."""
    was_training = model.training
    model.eval()
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    answers: list[str] = []
    try:
        for i in range(0, len(prompts), batch_size):
            texts = [tokenizer.apply_chat_template(p.messages, tokenize=False, add_generation_prompt=True)
                     for p in prompts[i : i + batch_size]]  # fmt: skip
            enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
            out = model.generate(**enc, do_sample=False, temperature=None, top_p=None, top_k=None,
                                 max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id)  # fmt: skip
            answers += [tokenizer.decode(ids, skip_special_tokens=True).strip()
                        for ids in out[:, enc["input_ids"].shape[1] :]]  # fmt: skip
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return answers


class GoldVerdicts(NamedTuple):
    correct: list[bool | None]  # None: the prompt has no verifier
    rate: float | None  # share correct among the prompts with a verifier
    per_skill: dict[str, float]


def gold_verdicts(prompts: Sequence[RLPrompt], answers: Sequence[str]) -> GoldVerdicts:
    """The built-in gold verifiers' verdict on each answer, the share correct, overall and per skill."""
    correct = [None if p.spec is None else bool(builtin.is_correct(p.spec, a))
               for p, a in zip(prompts, answers, strict=True)]  # fmt: skip
    judged = [c for c in correct if c is not None]
    skills: dict[str, list[bool]] = {}
    for p, c in zip(prompts, correct, strict=True):
        if c is not None and p.skill:
            skills.setdefault(p.skill, []).append(c)
    return GoldVerdicts(
        correct=correct,
        rate=sum(judged) / len(judged) if judged else None,
        per_skill={s: sum(v) / len(v) for s, v in sorted(skills.items())},
    )
