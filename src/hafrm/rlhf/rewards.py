"""Reward functions for TRL's online trainers: plain callables `(prompts, completions, **kw) ->
list[float]` (what `reward_funcs` accepts), each formatting the conversation as its reward model
was trained to read it, never with the policy's template."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from hafrm.errors import HafError
from hafrm.evaluation.scoring import Prompt, RewardModel, as_messages
from hafrm.modeling.backbone import check_safe_weights, safe_load_kwargs
from hafrm.modeling.hybrid import HAFRM_CONFIG_FILE, REWARD_HEAD_FILE

log = logging.getLogger(__name__)
Completion = str | list[dict[str, str]]


def completion_text(completion: Completion) -> str:
    """The assistant's text of a TRL completion (a string, or a list of messages)."""
    if isinstance(completion, str):
        return completion
    return "".join(m["content"] for m in completion if m.get("role") == "assistant")


class HafrmReward:
    """A hafrm model folder's head; normalised by its stored mean and std when asked and stored."""

    def __init__(self, rm: RewardModel, name: str = "hafrm", head: str | None = None, normalize: bool = True):
        self.rm, self.head = rm, rm.prepare(head)
        self.__name__ = name  # TRL names the metric rewards/<__name__>/mean
        self.normalized = False
        if normalize:
            try:
                rm.stats(self.head)
                self.normalized = True
            except HafError as e:  # no stats, or a constant head: raw scores
                log.warning("%s: rewards not normalised: %s", rm.path, e)

    def __call__(self, prompts: Sequence[Prompt], completions: Sequence[Completion], **_: Any) -> list[float]:
        texts = [completion_text(c) for c in completions]
        return self.rm.score_batch(list(prompts), texts, head=self.head, normalize=self.normalized)


class SeqClsReward:
    """A `hafrm export --to seq-cls` folder (or any sequence-classification reward model), read as
    TRL reads one: its own chat template over prompt + completion, the first logit."""

    def __init__(self, path: str | Path, name: str = "seq-cls", batch_size: int = 16, trust_remote_code: bool = False):
        check_safe_weights(path)
        self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        self.model = AutoModelForSequenceClassification.from_pretrained(
            path, dtype=torch.float32, **safe_load_kwargs(trust_remote_code)
        ).eval()
        self.__name__, self.batch_size, self.normalized = name, batch_size, False

    @torch.no_grad()
    def __call__(self, prompts: Sequence[Prompt], completions: Sequence[Completion], **_: Any) -> list[float]:
        texts = [
            self.tokenizer.apply_chat_template(as_messages(p) + [{"role": "assistant", "content": completion_text(c)}],
                                               tokenize=False)
            for p, c in zip(prompts, completions, strict=True)
        ]  # fmt: skip
        out: list[float] = []
        for i in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(texts[i : i + self.batch_size], return_tensors="pt", padding=True,
                                 padding_side="right", add_special_tokens=False)  # fmt: skip
            out += self.model(**enc).logits[:, 0].float().tolist()
        return out


class RemoteReward:
    """A running server: `hafrm serve`'s POST /score (the server formats each (prompt, response)
    with its model's template), or OpenRLHF's POST /get_reward (texts formatted here with the
    policy's template, as OpenRLHF sends them). The key comes from HAFRM_API_KEY when set."""

    def __init__(self, url: str, protocol: str, policy_tokenizer: Any, name: str = "url", timeout: float = 120.0):
        self.url, self.protocol, self.tokenizer, self.timeout = url.rstrip("/"), protocol, policy_tokenizer, timeout
        self.__name__, self.normalized = name, False  # the server normalises if it was started so
        key = os.environ.get("HAFRM_API_KEY")
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}

    def __call__(self, prompts: Sequence[Prompt], completions: Sequence[Completion], **_: Any) -> list[float]:
        texts = [completion_text(c) for c in completions]
        if self.protocol == "hafrm":
            body: dict[str, Any] = {
                "pairs": [{"prompt": p, "response": t} for p, t in zip(prompts, texts, strict=True)]
            }
            path, key = "/score", "scores"
        else:
            heads = [self.tokenizer.apply_chat_template(as_messages(p), tokenize=False, add_generation_prompt=True)
                     for p in prompts]  # fmt: skip
            eos = self.tokenizer.eos_token or ""
            body = {"query": [h + t + eos for h, t in zip(heads, texts, strict=True)], "prompts": heads}
            path, key = "/get_reward", "rewards"
        return self._post(path, body, key, len(texts))

    def _post(self, path: str, body: dict[str, Any], key: str, n: int) -> list[float]:
        import httpx

        try:
            response = httpx.post(self.url + path, json=body, headers=self.headers, timeout=self.timeout)
        except httpx.HTTPError as e:
            raise HafError(f"reward server {self.url}{path}: {type(e).__name__}: {e}") from None
        if response.status_code != 200:
            raise HafError(f"reward server {self.url}{path}: HTTP {response.status_code}: {response.text[:300]}")
        try:
            scores = [float(x) for x in response.json()[key]]
        except (ValueError, KeyError, TypeError, json.JSONDecodeError):
            raise HafError(
                f"reward server {self.url}{path}: no list {key!r} in its answer: {response.text[:300]}"
            ) from None
        if len(scores) != n:
            raise HafError(f"reward server {self.url}{path}: {len(scores)} scores for {n} texts")
        return scores


def is_hafrm_folder(path: str | Path) -> bool:
    return (Path(path) / REWARD_HEAD_FILE).is_file() and (Path(path) / HAFRM_CONFIG_FILE).is_file()


def reward_function(name: str, path: str, head: str | None = None, normalize: bool = True,
                    trust_remote_code: bool = False):  # fmt: skip
    """The reward callable of a model folder: a hafrm folder's head, or a seq-cls export's logit."""
    if not Path(path).is_dir():
        raise HafError(f"reward model {path}: no such folder")
    if is_hafrm_folder(path):
        rm = RewardModel.from_pretrained(path, trust_remote_code=trust_remote_code)
        return HafrmReward(rm, name=name, head=head, normalize=normalize)
    if not (Path(path) / "config.json").is_file():
        raise HafError(f"{path} is neither a hafrm model folder nor a seq-cls export (config.json is missing)")
    if head is not None:
        raise HafError(f"{path}: a seq-cls export has one score; --reward-head applies to hafrm folders only")
    return SeqClsReward(path, name=name, trust_remote_code=trust_remote_code)
