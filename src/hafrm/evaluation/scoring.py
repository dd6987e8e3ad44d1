"""Load a saved hafrm model folder and score (prompt, response) pairs with its inference head."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch

from hafrm.data.tokenize import PairTokenizer, pad_rows
from hafrm.errors import HafError
from hafrm.heads import HEAD_NAMES
from hafrm.modeling.backbone import check_safe_weights, load_backbone
from hafrm.modeling.batching import length_batches
from hafrm.modeling.hybrid import HAFRM_CONFIG_FILE, REWARD_HEAD_FILE, HybridRewardModel
from hafrm.objectives.losses import POLICY_LOSSES, ResponseLogps, build_implicit_reward

Prompt = str | list[dict[str, str]]
STATS_KEY = "reward_stats"  # in hafrm_config.json: head -> {"mean", "std", "n", "data"}
MIN_STD = 1e-6  # a head whose scores spread less than this (an untrained one) cannot be normalised


class Encoded(NamedTuple):
    ids: list[int]  # prompt + response tokens, formatted as training formats them
    start: int  # where the response starts


def as_messages(prompt: Prompt) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


class RewardModel:
    """A trained reward model ready to score. Use `hafrm.load(path)`.

    `head="reward"` scores with the reward head; `head="implicit"` with beta*(logp - ref), which
    loads the reference (the base model recorded at training time) on first use. The default is
    the head the model was trained to be scored by (the reward head, or implicit for DPO).
    """

    def __init__(self, model: HybridRewardModel, tokenizer: Any, meta: dict[str, Any], path: Path):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.meta = meta
        self.path = path
        self.encoder = PairTokenizer(
            tokenizer, meta.get("max_length", 10**9), meta.get("max_prompt_length", 10**9), meta.get("system_prompt")
        )
        self._reference: HybridRewardModel | None = None
        self.trust_remote_code = False  # also for the reference model (the implicit head)

    @classmethod
    def from_pretrained(cls, path: str | Path, trust_remote_code: bool = False) -> RewardModel:
        """A hafrm model folder: weights from safetensors only, the model's own code only with
        `trust_remote_code` (never because the folder asks for it)."""
        path = Path(path)
        for name in ("config.json", REWARD_HEAD_FILE, HAFRM_CONFIG_FILE):
            if not (path / name).is_file():
                raise HafError(f"{path} is not a hafrm model folder: {name} is missing")
        check_safe_weights(path)
        meta = json.loads((path / HAFRM_CONFIG_FILE).read_text())
        backbone = load_backbone(str(path), trust_remote_code=trust_remote_code)
        model = HybridRewardModel(backbone.model)
        model.load_weights(path)
        rm = cls(model, backbone.tokenizer, meta, path)
        rm.trust_remote_code = trust_remote_code
        return rm

    @property
    def default_head(self) -> str:
        return self.meta.get("inference_head", "reward")

    def stats(self, head: str | None = None) -> dict[str, float]:
        """The mean and std of `head`'s scores stored with the model (`hafrm train`, `hafrm eval --save-stats`)."""
        head = head or self.default_head
        stats = self.meta.get(STATS_KEY, {}).get(head)
        if not stats:
            raise HafError(
                f"{self.path}: no reward statistics for the {head} head are stored; "
                f"run `hafrm eval {self.path} --data ... --save-stats` to compute them"
            )
        if stats["std"] < MIN_STD:
            raise HafError(f"{self.path}: the {head} head's scores have std {stats['std']:.3g} (constant): "
                           "they cannot be normalised")  # fmt: skip
        return stats

    def to(self, device: str | torch.device) -> RewardModel:
        """Move the model (and its reference, once loaded) to `device`; scoring follows it."""
        self.model.to(device)
        if self._reference is not None:
            self._reference.to(device)
        return self

    def prepare(self, head: str | None = None) -> str:
        """Check `head` (default: the model's own) and load what it needs now, not at the first score."""
        head = head or self.default_head
        if head not in HEAD_NAMES:
            raise HafError(f"unknown head {head!r}; accepted: {', '.join(HEAD_NAMES)}")
        if head == "implicit" and POLICY_LOSSES[self.meta.get("loss", "sigmoid")].needs_reference:
            self._reference_model()
        return head

    def _reference_model(self) -> HybridRewardModel:
        if self._reference is None:
            base = self.meta.get("base_model")
            if not base or not Path(base).exists():
                raise HafError(f"implicit scores need the reference model, recorded as {base!r}, which is missing")
            reference = HybridRewardModel(load_backbone(base, trust_remote_code=self.trust_remote_code).model)
            self._reference = reference.to(self.model.device).eval()
        return self._reference

    def encode(self, prompt: Prompt, response: str) -> Encoded:
        """Token ids of the formatted (prompt, response), as training formats them, and where the response starts."""
        return Encoded(*self.encoder.encode(as_messages(prompt), response))

    def score_batch(
        self,
        prompts: Sequence[Prompt],
        responses: Sequence[str],
        head: str | None = None,
        batch_size: int = 16,
        normalize: bool = False,
    ) -> list[float]:
        """One score per (prompt, response); batches are formed by length to save padding."""
        if len(prompts) != len(responses):
            raise HafError(f"{len(prompts)} prompts but {len(responses)} responses")
        encoded = [self.encode(p, r) for p, r in zip(prompts, responses, strict=True)]
        ids, starts = [e.ids for e in encoded], [e.start for e in encoded]
        return self.score_ids(ids, starts, head, batch_size, normalize=normalize)

    @torch.no_grad()
    def score_ids(
        self,
        seqs: Sequence[list[int]],
        starts: Sequence[int],
        head: str | None = None,
        batch_size: int = 16,
        max_batch_tokens: int | None = None,
        normalize: bool = False,
    ) -> list[float]:
        """One score per token sequence (`starts`: where each response begins; the implicit head
        sums log-probs from there). Sequences are sorted by length and cut into batches of at most
        `batch_size` rows and, if given, `max_batch_tokens` padded tokens."""
        head = self.prepare(head)
        shift, scale = 0.0, 1.0
        if normalize:
            stats = self.stats(head)
            shift, scale = stats["mean"], stats["std"]
        scores = [0.0] * len(seqs)
        for idx in length_batches([len(s) for s in seqs], batch_size, max_batch_tokens):
            batch = pad_rows([seqs[i] for i in idx], [starts[i] for i in idx], self.tokenizer.pad_token_id)
            values = self._score({k: v.to(self.model.device) for k, v in batch.items()}, head)
            for i, v in zip(idx, values.tolist(), strict=True):
                scores[i] = (v - shift) / scale
        return scores

    def _score(self, batch: dict[str, torch.Tensor], head: str) -> torch.Tensor:
        if head == "reward":
            return self.model(batch["input_ids"], batch["attention_mask"]).rewards
        out = self.model(**batch)
        loss = self.meta.get("loss", "sigmoid")
        ref = self._reference_model()(**batch).logps if POLICY_LOSSES[loss].needs_reference else None
        implicit_reward = build_implicit_reward(loss, {"beta": 0.1} | self.meta)  # folders without beta: 0.1
        return implicit_reward(ResponseLogps(out.logps, ref, out.response_lengths))

    def score(self, prompt: Prompt, response: str, head: str | None = None) -> float:
        return self.score_batch([prompt], [response], head=head)[0]


def load(path: str | Path, trust_remote_code: bool = False) -> RewardModel:
    """Load a model folder written by `hafrm train` (or `HybridRewardModel.save_pretrained`)."""
    return RewardModel.from_pretrained(path, trust_remote_code=trust_remote_code)
