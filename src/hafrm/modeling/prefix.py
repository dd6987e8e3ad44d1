"""The frozen-prefix cache: hidden states after the frozen bottom layers, per token sequence.

With `freeze_layers: N` the embeddings and the bottom N decoder layers never change, so their
output for a given sequence is the same at every step, every evaluation and every run on the
same model. hafrm computes it once per data set (saved on disk next to the reference
log-probs), and each forward then runs only the layers above N, fed the cached states as
`inputs_embeds`. Training costs the top layers' forward and backward; evaluation the top
layers' forward. Results equal the full forward to float rounding; `check_cached_forward` checks that on a
real batch before the cache is used and turns it off (with a warning) for an architecture where
it does not hold (e.g. one that rescales `inputs_embeds` inside its forward).

It assumes the frozen layers are deterministic (no dropout in them, as in Llama, Qwen2, Mistral)
and a single process (the swap of the decoder's layer list is not for sharded models).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from transformers.utils.logging import tqdm  # the bars of the Trainer: shown in logs too

from hafrm.data.tokenize import pack_rows
from hafrm.fileio import atomic_path
from hafrm.modeling.batching import eval_mode, length_batches

log = logging.getLogger(__name__)
PREFIX_VERSION = "1"  # bump when what is cached changes


class PrefixCache:
    """Per-sequence hidden states after the bottom `n_layers` decoder layers, keyed by token ids."""

    def __init__(self, n_layers: int, max_bytes: int = 4 * 2**30):
        self.n_layers = n_layers
        self.max_bytes = max_bytes
        self.states: dict[bytes, Tensor] = {}
        self.bytes = 0
        self.hits = self.misses = self.skipped = 0  # skipped: not stored, the cache being full

    @staticmethod
    def key(ids: Tensor) -> bytes:
        return ids.to(torch.int64).cpu().numpy().tobytes()

    def get(self, ids: Tensor) -> Tensor | None:
        return self.states.get(self.key(ids))

    def put(self, ids: Tensor, states: Tensor) -> None:
        key = self.key(ids)
        if key in self.states:
            return
        size = states.numel() * states.element_size()
        if self.bytes + size > self.max_bytes:
            self.skipped += 1
            return
        self.states[key] = states.detach().to("cpu", copy=True)  # host memory; moved per batch
        self.bytes += size

    def __len__(self) -> int:
        return len(self.states)


@contextmanager
def layer_slice(decoder: nn.Module, start: int, stop: int | None) -> Iterator[None]:
    """Let `decoder` run only `layers[start:stop]` (its embeddings, rotary and norm unchanged).
    A config's per-layer `layer_types` (sliding or full attention, read by position in the loop
    of Qwen2, Gemma2 and others) is sliced the same way."""
    full = decoder.layers
    config = getattr(decoder, "config", None)
    types = getattr(config, "layer_types", None)
    decoder.layers = nn.ModuleList(list(full)[start:stop])
    if isinstance(types, list) and len(types) == len(full):
        config.layer_types = types[start:stop]
    try:
        yield
    finally:
        decoder.layers = full
        if isinstance(types, list) and len(types) == len(full):
            config.layer_types = types


def spans(
    input_ids: Tensor, attention_mask: Tensor | None, seq_ends: Tensor | None, segment_ids: Tensor | None
) -> list[tuple[int, int, int]]:
    """(row, start, end) of every sequence in a padded (attention_mask) or packed batch."""
    if attention_mask is None:
        lengths = torch.stack([(segment_ids == i).sum() for i in range(seq_ends.shape[0])])
        return [(int(r), int(c) + 1 - int(n), int(c) + 1) for (r, c), n in zip(seq_ends, lengths, strict=True)]
    out = []
    for row, mask in enumerate(attention_mask):
        real = mask.nonzero().flatten()
        out.append((row, int(real[0]), int(real[-1]) + 1))
    return out


def bottom_states(decoder: nn.Module, n_layers: int, **inputs: Tensor) -> Tensor:
    """The output of decoder layer `n_layers - 1` for a batch (the final norm is not applied)."""
    got: list[Tensor] = []

    def hook(_module, _args, output):
        got.append(output[0] if isinstance(output, tuple) else output)

    with layer_slice(decoder, 0, n_layers):
        handle = decoder.layers[n_layers - 1].register_forward_hook(hook)
        try:
            decoder(**inputs, use_cache=False)
        finally:
            handle.remove()
    return got[0]


def cached_forward(
    decoder: nn.Module,
    cache: PrefixCache,
    input_ids: Tensor,
    attention_mask: Tensor | None,
    position_ids: Tensor,
    seq_ends: Tensor | None = None,
    segment_ids: Tensor | None = None,
) -> Tensor:
    """The decoder's last hidden states, with the bottom layers' output read from `cache` (and
    computed for the sequences it lacks)."""
    where = spans(input_ids, attention_mask, seq_ends, segment_ids)
    found = [cache.get(input_ids[r, a:b]) for r, a, b in where]
    missing = sum(s is None for s in found)
    cache.hits += len(found) - missing
    cache.misses += missing
    if missing:  # in fp32 like the cached states, also inside a bf16 training step
        with torch.no_grad(), torch.autocast(input_ids.device.type, enabled=False):
            bottom = bottom_states(
                decoder, cache.n_layers, input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids
            )
        for i, (r, a, b) in enumerate(where):
            if found[i] is None:
                found[i] = bottom[r, a:b]
                cache.put(input_ids[r, a:b], found[i])
    dtype = found[0].dtype
    prefix = torch.zeros((*input_ids.shape, found[0].shape[-1]), dtype=dtype, device=input_ids.device)
    for (r, a, b), s in zip(where, found, strict=True):
        prefix[r, a:b] = s.to(prefix.device)
    with layer_slice(decoder, cache.n_layers, None):
        return decoder(
            inputs_embeds=prefix, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        ).last_hidden_state


def cached_forward_shared(
    decoder: nn.Module,
    cache: PrefixCache,
    input_ids: Tensor,
    attention_mask: Tensor,
    position_ids: Tensor,
    segments: Tensor,
) -> Tensor:
    """`cached_forward` for prefix-shared rows. The cache holds each whole sequence's states; a
    shared segment takes the chosen's states whole and the rejected's from the prompt's end on,
    which equal what the shared rows' bottom layers give (the rejected branch sees the prompt
    and itself only)."""
    where = segments.tolist()  # per segment: row, start, first length, second length, prompt length
    keys = []  # per segment: the first sequence's tokens, and the second's whole (prompt + response)
    for r, a, n1, n2, p in where:
        first = input_ids[r, a : a + n1]
        second = torch.cat([input_ids[r, a : a + p], input_ids[r, a + n1 : a + n1 + n2]]) if n2 else None
        keys.append((first, second))
    found = [(cache.get(f), cache.get(s) if s is not None else None) for f, s in keys]
    wanted = sum(1 + (s is not None) for _, s in keys)
    missing = sum((a is None) + (s is not None and b is None) for (_, s), (a, b) in zip(keys, found, strict=True))
    cache.hits += wanted - missing
    cache.misses += missing
    if missing:  # in fp32 like the cached states, also inside a bf16 training step
        with torch.no_grad(), torch.autocast(input_ids.device.type, enabled=False):
            bottom = bottom_states(
                decoder, cache.n_layers, input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids
            )
        for i, ((r, a, n1, n2, p), (first, second)) in enumerate(zip(where, keys, strict=True)):
            states_first, states_second = found[i]
            if states_first is None:
                states_first = bottom[r, a : a + n1]
                cache.put(first, states_first)
            if second is not None and states_second is None:
                states_second = torch.cat([bottom[r, a : a + p], bottom[r, a + n1 : a + n1 + n2]])
                cache.put(second, states_second)
            found[i] = (states_first, states_second)
    width = found[0][0].shape[-1]
    prefix = torch.zeros((*input_ids.shape, width), dtype=found[0][0].dtype, device=input_ids.device)
    for (r, a, n1, n2, p), (states_first, states_second) in zip(where, found, strict=True):
        prefix[r, a : a + n1] = states_first.to(prefix.device)
        if n2:
            prefix[r, a + n1 : a + n1 + n2] = states_second[p:].to(prefix.device)
    with layer_slice(decoder, cache.n_layers, None):
        return decoder(
            inputs_embeds=prefix, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        ).last_hidden_state


# on disk --------------------------------------------------------------------------------------
def set_key(model_fingerprint: str, n_layers: int, sequences: Sequence[Sequence[int]]) -> str:
    h = hashlib.blake2b(f"{model_fingerprint}:{n_layers}:{PREFIX_VERSION}".encode(), digest_size=16)
    for s in sequences:
        h.update(len(s).to_bytes(4, "little"))
        h.update(torch.tensor(s, dtype=torch.int64).numpy().tobytes())
    return h.hexdigest()


class FillResult(NamedTuple):
    path: Path  # the set's states on disk
    hit: bool  # read from there, not computed


@torch.no_grad()
def fill(
    model: nn.Module,
    sequences: Sequence[Sequence[int]],
    cache_dir: Path,
    model_fingerprint: str,
    pad_token_id: int,
    pack_length: int = 1024,
) -> FillResult:
    """Put every sequence's bottom states into the model's prefix cache (see `attach_prefix_cache`):
    from the set's file under `cache_dir/prefix/` when it exists, else computed in packed batches
    and saved."""
    cache: PrefixCache = model.prefix_cache
    unique = list(dict.fromkeys(tuple(s) for s in sequences))
    path = Path(cache_dir) / "prefix" / f"{set_key(model_fingerprint, cache.n_layers, unique)}.safetensors"
    if path.is_file():
        data = load_file(str(path))
        states, offsets = data["states"], data["offsets"].tolist()
        if len(offsets) == len(unique) + 1 and offsets[-1] == states.shape[0]:
            for i, seq in enumerate(unique):
                cache.put(torch.tensor(seq), states[offsets[i] : offsets[i + 1]])
            return FillResult(path, hit=True)
        log.warning("prefix cache %s does not match its data set; recomputing", path)
    with eval_mode(model):
        states, offsets, per_seq = _compute_set(model, cache, unique, pad_token_id, pack_length)
    with atomic_path(path) as tmp:
        save_file({"states": states.contiguous(), "offsets": offsets}, str(tmp))
    for seq, s in zip(unique, per_seq, strict=True):
        cache.put(torch.tensor(seq), s)
    return FillResult(path, hit=False)


def _compute_set(
    model: nn.Module, cache: PrefixCache, unique: list[tuple[int, ...]], pad_token_id: int, pack_length: int
) -> tuple[Tensor, Tensor, list[Tensor]]:
    """Every sequence's bottom states, in packed passes of four rows (shortest first)."""
    decoder = model.decoder()
    per_seq: list[Tensor | None] = [None] * len(unique)
    with tqdm(total=len(unique), desc=f"frozen-prefix states ({cache.n_layers} layers)", unit="seq") as bar:
        # shortest first, four packed rows a pass
        for batch in length_batches([len(s) for s in unique], max_tokens=4 * pack_length, packed=True):
            seqs = [list(unique[i]) for i in batch]
            packed = pack_rows(seqs, [0] * len(seqs), pad_token_id, pack_length)
            bottom = bottom_states(
                decoder, cache.n_layers, input_ids=packed["input_ids"].to(model.device), attention_mask=None,
                position_ids=packed["position_ids"].to(model.device),
            )  # fmt: skip
            for j, i in enumerate(batch):
                r, c = packed["seq_ends"][j].tolist()
                per_seq[i] = bottom[r, c + 1 - len(unique[i]) : c + 1].float().cpu()
            bar.update(len(batch))
    states = torch.cat(per_seq)  # type: ignore[arg-type]
    offsets = torch.tensor([0, *torch.cumsum(torch.tensor([len(s) for s in unique]), 0).tolist()])
    return states, offsets, per_seq  # type: ignore[return-value]


@torch.no_grad()
def check_cached_forward(
    model: nn.Module, n_layers: int, input_ids: Tensor, position_ids: Tensor, attention_mask: Tensor
) -> float:
    """Largest difference between the full forward and the path through a cache of the bottom
    `n_layers` layers' output, on a batch (padded)."""
    decoder = model.decoder()
    full = decoder(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
    probe = PrefixCache(n_layers)
    cached = cached_forward(decoder, probe, input_ids, attention_mask, position_ids)
    real = attention_mask.bool()
    return float((full.last_hidden_state[real] - cached[real]).abs().max())
