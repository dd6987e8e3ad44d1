"""The policy head as a generator: sample from a causal LM or a hafrm model folder's LM head, and
measure the gold-correct rate of its greedy answers on built-in prompts no model given was trained on."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from hafrm.evaluation.scoring import as_messages
from hafrm.modeling.backbone import load_backbone
from hafrm.rlhf.gold import RLPrompt, builtin_prompt_split, gold_verdicts, greedy_answers
from hafrm.rlhf.rewards import is_hafrm_folder
from hafrm.rlhf.run import paired_change


@torch.no_grad()
def sample(model_name: str, prompts: Sequence[str], num_samples: int = 1, temperature: float = 0.0,
           max_new_tokens: int = 64, seed: int = 0, trust_remote_code: bool = False) -> list[list[str]]:  # fmt: skip
    """`num_samples` answers per prompt (greedy at temperature 0) from the model's LM head."""
    policy = load_backbone(model_name, trust_remote_code=trust_remote_code)
    items = [RLPrompt(as_messages(p)) for p in prompts]
    if temperature == 0:
        return [[a] * num_samples for a in greedy_answers(policy.model, policy.tokenizer, items, max_new_tokens)]
    torch.manual_seed(seed)
    tok, out = policy.tokenizer, []
    for p in items:
        enc = tok(tok.apply_chat_template(p.messages, tokenize=False, add_generation_prompt=True),
                  return_tensors="pt", add_special_tokens=False)  # fmt: skip
        ids = policy.model.eval().generate(**enc, do_sample=True, temperature=temperature, top_p=1.0, top_k=0,
                                           num_return_sequences=num_samples, max_new_tokens=max_new_tokens,
                                           pad_token_id=tok.pad_token_id)  # fmt: skip
        out.append([tok.decode(row[enc["input_ids"].shape[1] :], skip_special_tokens=True).strip() for row in ids])
    return out


def gold_report(models: Sequence[str] | Mapping[str, str], num_prompts: int = 64, max_new_tokens: int = 32,
                trust_remote_code: bool = False) -> dict[str, Any]:  # fmt: skip
    """Each model's greedy answers on the same built-in prompts (none of the hafrm folders among
    `models` was trained on them), judged by the gold verifiers: overall and per skill, and each
    model against the first (paired over the prompts, with a 95 % bootstrap interval). `models`:
    names or folders, or NAME -> folder (the report then uses the names)."""
    named = dict(models) if isinstance(models, Mapping) else {m: m for m in models}
    folders = [m for m in named.values() if is_hafrm_folder(m)]
    split = builtin_prompt_split(folders, num_prompts, max_train=0)
    report: dict[str, Any] = {"prompts": len(split.eval), "excluded_as_training": split.excluded, "models": {}}
    for name, path in named.items():
        policy = load_backbone(path, trust_remote_code=trust_remote_code)
        answers = greedy_answers(policy.model, policy.tokenizer, split.eval, max_new_tokens)
        gold = gold_verdicts(split.eval, answers)
        report["models"][name] = {"gold": gold.rate, "gold_per_skill": gold.per_skill, "correct": gold.correct,
                                  "answers": answers}  # fmt: skip
    report["differences"] = {}
    first, *others = named
    for name in others:  # the prompts that have a verifier: each a 0/1 pair, first vs this model
        pairs = [(float(a), float(b)) for a, b in zip(report["models"][first]["correct"],
                                                        report["models"][name]["correct"], strict=True)
                 if a is not None and b is not None]  # fmt: skip
        report["differences"][f"{name} - {first}"] = paired_change([a for a, _ in pairs], [b for _, b in pairs])
    report["eval_prompts"] = [p.messages for p in split.eval]
    return report
