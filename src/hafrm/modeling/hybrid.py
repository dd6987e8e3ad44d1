"""HybridRewardModel: a causal LM backbone with its LM (policy) head and a scalar reward head.

Shapes: `2B` stacked sequences (chosen rows first, then rejected), `T` tokens, `H` hidden,
`V` vocabulary. One forward returns, per sequence, the reward at its last real token and the
summed log-prob of its response tokens, without materialising `(2B, T, V)` logits.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint
from transformers import PreTrainedModel
from transformers.modeling_utils import load_state_dict

from hafrm.fileio import write_text_atomic
from hafrm.modeling import lora
from hafrm.modeling.attention import backbone_mask
from hafrm.modeling.backbone import freeze_bottom_layers
from hafrm.modeling.prefix import PrefixCache, cached_forward, cached_forward_shared

REWARD_HEAD_FILE = "reward_head.safetensors"
HAFRM_CONFIG_FILE = "hafrm_config.json"


@dataclass(kw_only=True)
class HybridOutput:
    rewards: Tensor  # (2B,) fp32, reward head at each sequence's last real token (chosen first)
    logps: Tensor | None  # (2B,) fp32, summed response-token log-probs (None if not asked)
    response_lengths: Tensor | None  # (2B,) response tokens counted in `logps`


def last_token_index(attention_mask: Tensor) -> Tensor:
    """Index of the last real token per row, for left or right padding: (N, T) -> (N,)."""
    T = attention_mask.shape[1]
    return T - 1 - attention_mask.flip(-1).to(torch.long).argmax(-1)


def position_ids_from_mask(attention_mask: Tensor) -> Tensor:
    """Positions counted over real tokens only, so left padding does not shift them."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


# padded or packed rows; a prefix-shared batch (hafrm.data.shared) adds who sees whom and its segments
MODEL_KEYS = ("input_ids", "attention_mask", "position_ids", "seq_ends", "segment_ids", "attention", "segments")
# where the response tokens are: padded or packed (response_mask), prefix-shared (explicit entries)
LOGP_KEYS = ("response_mask", "logp_rows", "logp_cols", "logp_targets", "logp_seq")


def model_inputs(batch: dict[str, Tensor], with_logps: bool = True) -> dict[str, Tensor]:
    """The keys of a collated batch (padded or packed) that `HybridRewardModel.forward` takes."""
    keys = MODEL_KEYS + (LOGP_KEYS if with_logps else ())
    return {k: batch[k] for k in keys if k in batch}


def _token_logps(hidden: Tensor, weight: Tensor, targets: Tensor, softcap: float | None) -> Tensor:
    logits = F.linear(hidden, weight).float()  # (n, V) for one chunk only
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return logits.gather(-1, targets[:, None]).squeeze(-1) - logits.logsumexp(-1)


def response_logps(
    hidden: Tensor,
    lm_head_weight: Tensor,
    input_ids: Tensor,
    response_mask: Tensor,
    chunk_size: int = 512,
    softcap: float | None = None,
    segment_ids: Tensor | None = None,
    n_sequences: int | None = None,
    keep_logits_bytes: int = 0,
) -> tuple[Tensor, Tensor]:
    """Summed log-probs of the tokens where `response_mask` is 1, and their counts, per sequence.

    Only positions that predict a response token are projected through the LM head, in chunks
    of `chunk_size`. With gradients on, the chunks' logits are kept for backward while they fit
    in `keep_logits_bytes`; beyond that every chunk is recomputed in backward (checkpointed), so
    at most one `(chunk_size, V)` block of logits is alive at a time. A padded batch has one
    sequence per row; a packed one gives each token's sequence in `segment_ids` (same shape as
    `input_ids`). The first token of a sequence is never a response token, so no sequence is
    ever scored from its packed neighbour's last position.
    """
    target_mask = response_mask[:, 1:].bool()  # token t+1 is predicted at position t
    rows, cols = target_mask.nonzero(as_tuple=True)  # (N,) each
    targets = input_ids[rows, cols + 1]
    seq = rows if segment_ids is None else segment_ids[rows, cols + 1]
    n_rows = input_ids.shape[0] if segment_ids is None else int(n_sequences)
    states = hidden[rows, cols]  # (N, H)
    return summed_logps(states, lm_head_weight, targets, seq, n_rows, chunk_size, softcap, keep_logits_bytes)


def summed_logps(
    states: Tensor,
    lm_head_weight: Tensor,
    targets: Tensor,
    seq: Tensor,
    n_sequences: int,
    chunk_size: int = 512,
    softcap: float | None = None,
    keep_logits_bytes: int = 0,
) -> tuple[Tensor, Tensor]:
    """The log-prob of each target token from the hidden state (N, H) that predicts it, summed per
    sequence (`seq`, (N,)), and the counts: the LM head in chunks, as `response_logps` says."""
    pieces = []
    recompute = states.shape[0] * lm_head_weight.shape[0] * 4 > keep_logits_bytes  # fp32 logits
    for start in range(0, states.shape[0], chunk_size):
        args = (states[start : start + chunk_size], lm_head_weight, targets[start : start + chunk_size])
        if torch.is_grad_enabled() and recompute:
            pieces.append(checkpoint(_token_logps, *args, softcap, use_reentrant=False))
        else:
            pieces.append(_token_logps(*args, softcap))
    token_logps = torch.cat(pieces) if pieces else states.new_zeros(0, dtype=torch.float32)
    sums = torch.zeros(n_sequences, dtype=torch.float32, device=states.device).index_add(0, seq, token_logps)
    lengths = torch.zeros(n_sequences, dtype=torch.long, device=states.device).index_add(0, seq, torch.ones_like(seq))
    return sums, lengths


class HybridRewardModel(nn.Module):
    """A causal LM with a zero-initialised fp32 reward head on its last hidden states.

    The head has no bias, like the `score` layer of transformers' `*ForSequenceClassification`
    models, so an export scores exactly as hafrm does (the BT and policy losses cannot move a bias
    anyway: it cancels in r_w - r_l). Folders saved with a biased head still load with it.
    """

    def __init__(
        self,
        backbone: PreTrainedModel,
        reward_head: nn.Linear | None = None,
        *,
        logprob_chunk_size: int = 512,
        keep_logits_bytes: int = 512 * 2**20,
    ):
        """`logprob_chunk_size`: response positions per LM-head chunk; `keep_logits_bytes`: response
        logits kept for backward up to this, beyond it recomputed (see `response_logps`)."""
        super().__init__()
        self.backbone = backbone
        hidden = backbone.config.get_text_config().hidden_size
        if reward_head is None:
            reward_head = nn.Linear(hidden, 1, bias=False, dtype=torch.float32)
            nn.init.zeros_(reward_head.weight)
        self.reward_head = reward_head.float()
        self.logprob_chunk_size = logprob_chunk_size
        self.keep_logits_bytes = keep_logits_bytes
        # the frozen layers' output per sequence (hafrm.modeling.prefix); set by attach_prefix_cache
        self.prefix_cache: PrefixCache | None = None
        self.lora_config = None  # peft's LoraConfig once `add_adapters` has put adapters on the backbone

    def add_adapters(self, first_layer: int, r: int, alpha: float, dropout: float, targets, base_model: str) -> int:
        """LoRA adapters (hafrm.modeling.lora) on decoder layers `first_layer` and up, every backbone
        weight frozen; the reward head trains in full. Returns the number of adapted modules."""
        layers_path = next(n for n, m in self.backbone.named_modules() if m is self.decoder().layers)
        self.lora_config = lora.add_adapters(
            self.backbone, layers_path, first_layer, r, alpha, dropout, targets, base_model
        )
        return len(lora.lora_layers(self.backbone))

    @property
    def config(self):
        return self.backbone.config

    @property
    def device(self) -> torch.device:
        return self.reward_head.weight.device

    def decoder(self) -> nn.Module:
        return self.backbone.get_decoder()

    def attach_prefix_cache(self, cache: PrefixCache) -> None:
        """Read the bottom `cache.n_layers` layers' output from `cache` in every forward from now on
        (and store there what it lacks): only valid while those layers are frozen."""
        self.prefix_cache = cache

    def detach_prefix_cache(self) -> PrefixCache | None:
        """Run every layer again in each forward; returns the cache that was attached, if any."""
        cache, self.prefix_cache = self.prefix_cache, None
        return cache

    def forward(
        self,
        input_ids: Tensor,  # (2B, T) padded, or (R, L) packed rows
        attention_mask: Tensor | None = None,  # (2B, T); None for packed rows
        response_mask: Tensor | None = None,  # 1 on response tokens; None = no logps
        position_ids: Tensor | None = None,  # packed: restarting at 0 for every sequence
        seq_ends: Tensor | None = None,  # packed: (2B, 2) row and column of each sequence's last token
        segment_ids: Tensor | None = None,  # packed: (R, L) the sequence of each token
        attention: Tensor | None = None,  # prefix-shared: (R, L, L) who sees whom (hafrm.data.shared)
        segments: Tensor | None = None,  # prefix-shared: (S, 5) where each segment and its parts are
        logp_rows: Tensor | None = None,  # prefix-shared: (N,) where each response token is predicted,
        logp_cols: Tensor | None = None,
        logp_targets: Tensor | None = None,  # the token,
        logp_seq: Tensor | None = None,  # and its sequence
    ) -> HybridOutput:
        """Rewards and response log-probs of 2B sequences, padded or packed (see `pack_rows`).

        Packed rows hold several sequences back to back with no padding; with `attention_mask`
        None the backbone builds a block-causal mask from the restarting `position_ids`, so each
        sequence attends only to itself (transformers' packed-sequence path).
        """
        if attention is not None:
            return self._forward_shared(input_ids, position_ids, attention, segments, seq_ends, logp_rows, logp_cols,
                                        logp_targets, logp_seq)  # fmt: skip
        packed = attention_mask is None
        if packed and (position_ids is None or seq_ends is None or segment_ids is None):
            raise ValueError("packed rows need position_ids, seq_ends and segment_ids")
        if position_ids is None:
            position_ids = position_ids_from_mask(attention_mask)
        if self.prefix_cache is not None:  # the bottom layers' output read from the cache
            hidden = cached_forward(
                self.decoder(), self.prefix_cache, input_ids, attention_mask, position_ids, seq_ends, segment_ids
            )
        else:
            hidden = self.decoder()(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                use_cache=False,
            ).last_hidden_state  # (2B, T, H) or (R, L, H)
        if packed:
            last = hidden[seq_ends[:, 0], seq_ends[:, 1]]
        else:
            last = hidden[torch.arange(hidden.shape[0], device=hidden.device), last_token_index(attention_mask)]
        rewards = self._rewards(last)  # (2B,)
        logps = lengths = None
        if response_mask is not None:
            text_config = self.backbone.config.get_text_config()
            logps, lengths = response_logps(
                hidden,
                self.backbone.get_output_embeddings().weight,
                input_ids,
                response_mask,
                chunk_size=self.logprob_chunk_size,
                softcap=getattr(text_config, "final_logit_softcapping", None),
                segment_ids=segment_ids if packed else None,
                n_sequences=last.shape[0],
                keep_logits_bytes=self.keep_logits_bytes,
            )
        return HybridOutput(rewards=rewards, logps=logps, response_lengths=lengths)

    def _forward_shared(
        self,
        input_ids: Tensor,
        position_ids: Tensor,
        attention: Tensor,
        segments: Tensor | None,
        seq_ends: Tensor,
        logp_rows: Tensor | None,
        logp_cols: Tensor | None,
        logp_targets: Tensor | None,
        logp_seq: Tensor | None,
    ) -> HybridOutput:
        """`forward` on prefix-shared rows: the backbone gets the mask itself (`backbone_mask`; a
        BlockMask from `segments` under flex_attention)."""
        mask = backbone_mask(attention, self.config._attn_implementation, segments)
        if self.prefix_cache is not None:  # the bottom layers' output read from the cache
            if segments is None:
                raise ValueError("prefix-shared rows need their segments to go through the frozen-prefix cache")
            hidden = cached_forward_shared(self.decoder(), self.prefix_cache, input_ids, mask, position_ids, segments)
        else:
            hidden = self.decoder()(
                input_ids=input_ids, attention_mask=mask, position_ids=position_ids, use_cache=False
            ).last_hidden_state  # (R, L, H)
        last = hidden[seq_ends[:, 0], seq_ends[:, 1]]
        rewards = self._rewards(last)  # (2B,)
        logps = lengths = None
        if logp_targets is not None:
            text_config = self.backbone.config.get_text_config()
            logps, lengths = summed_logps(
                hidden[logp_rows, logp_cols],
                self.backbone.get_output_embeddings().weight,
                logp_targets,
                logp_seq,
                last.shape[0],
                chunk_size=self.logprob_chunk_size,
                softcap=getattr(text_config, "final_logit_softcapping", None),
                keep_logits_bytes=self.keep_logits_bytes,
            )
        return HybridOutput(rewards=rewards, logps=logps, response_lengths=lengths)

    def _rewards(self, last: Tensor) -> Tensor:
        """The reward head on each sequence's last hidden state, in fp32 whatever the autocast."""
        with torch.autocast(device_type=last.device.type, enabled=False):
            return self.reward_head(last.float()).squeeze(-1)

    def freeze_bottom(self, n_layers: int) -> int:
        """Freeze the backbone's embeddings and first `n_layers` layers (`freeze_bottom_layers`);
        the reward head always trains."""
        return freeze_bottom_layers(self.backbone, n_layers)

    # persistence -----------------------------------------------------------------------
    def save_pretrained(
        self,
        directory: str | Path,
        model_card: dict[str, Any] | None = None,
        state_dict: dict[str, Tensor] | None = None,
    ) -> None:
        """Write a folder that `AutoModelForCausalLM` can also load (the policy head), with the
        `model_card` (what `hafrm.load` needs: mode, head, loss, ...) as hafrm_config.json.

        `state_dict`: this model's full weights gathered by an engine that shards them (DeepSpeed
        ZeRO-3, FSDP), keyed as `self.state_dict()`, saved instead of the local (sharded) ones;
        the reward head is saved in fp32 whatever dtype the engine trained it in."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        backbone_state = head_state = None
        if state_dict is not None:
            parts: dict[str, dict[str, Tensor]] = {"backbone": {}, "reward_head": {}}
            for key, value in state_dict.items():
                part, _, name = key.partition(".")
                if part in parts:
                    parts[part][name] = value
            backbone_state, head_state = parts["backbone"], parts["reward_head"]
            if not head_state:
                raise ValueError(f"{directory}: the gathered weights hold no reward head (keys {list(state_dict)[:3]})")
        if self.lora_config is None:
            self.backbone.save_pretrained(directory, state_dict=backbone_state)
        else:  # the adapters merged in (a plain model folder), and the adapters on their own
            if state_dict is not None:
                raise NotImplementedError("LoRA with an engine that shards the weights (ZeRO-3, FSDP) is not supported")
            self.backbone.save_pretrained(directory, state_dict=lora.merged_state_dict(self.backbone))
            lora.save_adapters(self.backbone, self.lora_config, directory)
        head_state = head_state if head_state is not None else self.reward_head.state_dict()
        head = {k: v.detach().float().contiguous().cpu() for k, v in head_state.items()}
        save_file(head, str(directory / REWARD_HEAD_FILE))
        if model_card is not None:
            write_text_atomic(directory / HAFRM_CONFIG_FILE, json.dumps(model_card, indent=2) + "\n")

    def load_weights(self, directory: str | Path) -> None:
        """Load backbone and reward-head weights saved by `save_pretrained`, in place (into a model
        with adapters: the adapters, exactly as saved, and the base weights left as they are)."""
        directory = Path(directory)
        if self.lora_config is not None:
            lora.load_adapters(self.backbone, directory)
            self._load_head(directory)
            return
        files = sorted(directory.glob("model*.safetensors"))
        state: dict[str, Tensor] = {}
        for f in files:
            state.update(load_state_dict(str(f)))
        missing, unexpected = self.backbone.load_state_dict(state, strict=False)  # tied weights are absent
        tied = set(getattr(self.backbone, "all_tied_weights_keys", {}) or {})
        missing = [k for k in missing if k not in tied and "lm_head" not in k]
        if missing or unexpected:
            raise RuntimeError(
                f"{directory}: weights do not match (missing {missing[:3]}, unexpected {unexpected[:3]})"
            )
        self.backbone.tie_weights()
        self._load_head(directory)

    def _load_head(self, directory: Path) -> None:
        head = load_file(str(directory / REWARD_HEAD_FILE))
        if ("bias" in head) != (self.reward_head.bias is not None):  # a folder from before the bias-free head
            biased = nn.Linear(self.reward_head.in_features, 1, bias="bias" in head, dtype=torch.float32)
            self.reward_head = biased.to(self.reward_head.weight.device)
        self.reward_head.load_state_dict(head)
