"""The frozen-prefix cache: hidden states after the frozen bottom layers, per token sequence.

With `freeze_layers: N` the embeddings and the bottom N decoder layers never change, so their
output for a given sequence is the same at every step, every evaluation and every run on the
same model. hafrm computes it once per data set (saved on disk next to the reference
log-probs), and each forward then runs only the layers above N, fed the cached states as
`inputs_embeds`. Training costs the top layers' forward and backward; evaluation the top
layers' forward. With prefix sharing a pair that shares its prompt is filled as one
prefix-shared segment, and its prompt's states are held once for both sequences. Results equal
the full forward to float rounding; `check_cached_forward` checks that on a real batch before the
cache is used and turns it off (with a warning) for an architecture where it does not hold (e.g.
one that rescales `inputs_embeds` inside its forward).

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

from hafrm.data.shared import pack_shared_rows, shares_prompt
from hafrm.data.tokenize import TokenizedPair, pack_rows
from hafrm.fileio import atomic_path
from hafrm.modeling.attention import backbone_mask
from hafrm.modeling.batching import eval_mode, length_batches

log = logging.getLogger(__name__)
PREFIX_VERSION = "2"  # bump when what is cached changes (2: prefix-shared units)


class PrefixCache:
    """Per-sequence hidden states after the bottom `n_layers` decoder layers, keyed by token ids.

    A sequence stored with its prompt's states apart (`put(..., prompt_states=...)`, the two
    sequences of a prefix-shared pair) keeps only the states after its prompt; the prompt's are
    stored once for every sequence that starts with it, and `get` puts the two back together."""

    def __init__(self, n_layers: int, max_bytes: int = 4 * 2**30):
        self.n_layers = n_layers
        self.max_bytes = max_bytes
        # sequence -> (the key of its stored prompt, or None; its states after that prompt)
        self.states: dict[bytes, tuple[bytes | None, Tensor]] = {}
        self.prompts: dict[bytes, Tensor] = {}
        self.bytes = 0
        self.hits = self.misses = self.skipped = 0  # skipped: not stored, the cache being full

    @staticmethod
    def key(ids: Tensor) -> bytes:
        return ids.to(torch.int64).cpu().numpy().tobytes()

    def get(self, ids: Tensor, start: int = 0) -> Tensor | None:
        """The states of `ids` from token `start` on (a view, where they are stored in one piece)."""
        entry = self.states.get(self.key(ids))
        if entry is None:
            return None
        prompt_key, rest = entry
        if prompt_key is None:
            return rest[start:]
        prompt = self.prompts[prompt_key]
        if start >= prompt.shape[0]:
            return rest[start - prompt.shape[0] :]
        return torch.cat([prompt[start:], rest])

    def put(self, ids: Tensor, states: Tensor, prompt_states: Tensor | None = None) -> None:
        """Store the states of `ids`: all of them in `states`, or with `prompt_states` (those of its
        first `len(prompt_states)` tokens, stored once per prompt) and the rest in `states`."""
        key = self.key(ids)
        if key in self.states:
            return
        prompt_key = None if prompt_states is None else self.key(ids[: prompt_states.shape[0]])
        new = [states] + ([prompt_states] if prompt_key is not None and prompt_key not in self.prompts else [])
        size = sum(t.numel() * t.element_size() for t in new)
        if self.bytes + size > self.max_bytes:
            self.skipped += 1
            return
        if len(new) == 2:
            self.prompts[prompt_key] = _host(prompt_states)
        self.states[key] = (prompt_key, _host(states))
        self.bytes += size

    def __len__(self) -> int:
        return len(self.states)


def _host(states: Tensor) -> Tensor:
    return states.detach().to("cpu", copy=True)  # a compact copy in host memory; moved per batch


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
    """`cached_forward` for prefix-shared rows. A shared segment takes the chosen's states whole and
    the rejected's from the prompt's end on, which equal what the shared rows' bottom layers give
    (the rejected branch sees the prompt and itself only); a miss stores the two sequences with
    their prompt's states once."""
    where = segments.tolist()  # per segment: row, start, first length, second length, prompt length
    keys = []  # per segment: the first sequence's tokens, and the second's whole (prompt + response)
    for r, a, n1, n2, p in where:
        first = input_ids[r, a : a + n1]
        second = torch.cat([input_ids[r, a : a + p], input_ids[r, a + n1 : a + n1 + n2]]) if n2 else None
        keys.append((first, second))
    found = [
        (cache.get(first), cache.get(second, start=p) if second is not None else None)
        for (first, second), (*_, p) in zip(keys, where, strict=True)
    ]
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
            prompt = bottom[r, a : a + p] if n2 else None
            if states_first is None:
                states_first = bottom[r, a : a + n1]
                cache.put(first, states_first if prompt is None else states_first[p:], prompt_states=prompt)
            if second is not None and states_second is None:
                states_second = bottom[r, a + n1 : a + n1 + n2]
                cache.put(second, states_second, prompt_states=prompt)
            found[i] = (states_first, states_second)
    width = found[0][0].shape[-1]
    prefix = torch.zeros((*input_ids.shape, width), dtype=found[0][0].dtype, device=input_ids.device)
    for (r, a, n1, n2, _), (states_first, states_second) in zip(where, found, strict=True):
        prefix[r, a : a + n1] = states_first.to(prefix.device)
        if n2:
            prefix[r, a + n1 : a + n1 + n2] = states_second.to(prefix.device)
    with layer_slice(decoder, cache.n_layers, None):
        return decoder(
            inputs_embeds=prefix, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        ).last_hidden_state


# on disk --------------------------------------------------------------------------------------
class Unit(NamedTuple):
    """What the fill computes in one piece: a sequence alone (`second` empty), or a prefix-shared
    pair, whose states are laid out `[prompt | first's rest | second's rest]`."""

    first: tuple[int, ...]
    second: tuple[int, ...] = ()
    prompt: int = 0  # the shared prompt's length (0 alone)

    @property
    def tokens(self) -> int:
        """The positions its states take: the prompt once."""
        return len(self.first) + len(self.second) - self.prompt


def fill_units(pairs: Sequence[TokenizedPair], prefix_sharing: bool = False) -> list[Unit]:
    """The units of a data set, each once: with `prefix_sharing` a pair that shares its prompt is
    one (its prompt computed and stored once), other pairs' sequences one each."""
    units: list[Unit] = []
    for p in pairs:
        c, r = tuple(p.chosen_ids), tuple(p.rejected_ids)
        if prefix_sharing and shares_prompt(c, r, p.chosen_prompt_len, p.rejected_prompt_len):
            units.append(Unit(c, r, p.chosen_prompt_len))
        else:
            units += [Unit(c), Unit(r)]
    return list(dict.fromkeys(units))


def set_key(model_fingerprint: str, n_layers: int, units: Sequence[Unit]) -> str:
    h = hashlib.blake2b(f"{model_fingerprint}:{n_layers}:{PREFIX_VERSION}".encode(), digest_size=16)
    for u in units:
        h.update(b"".join(n.to_bytes(4, "little") for n in (len(u.first), len(u.second), u.prompt)))
        h.update(torch.tensor(u.first + u.second, dtype=torch.int64).numpy().tobytes())
    return h.hexdigest()


def _store(cache: PrefixCache, unit: Unit, states: Tensor) -> None:
    """Put one unit's states (laid out as `Unit` says) into the cache."""
    if not unit.second:
        cache.put(torch.tensor(unit.first), states)
        return
    p, n1 = unit.prompt, len(unit.first)
    cache.put(torch.tensor(unit.first), states[p:n1], prompt_states=states[:p])
    cache.put(torch.tensor(unit.second), states[n1:], prompt_states=states[:p])


class FillResult(NamedTuple):
    path: Path  # the set's states on disk
    hit: bool  # read from there, not computed


@torch.no_grad()
def fill(
    model: nn.Module,
    pairs: Sequence[TokenizedPair],
    cache_dir: Path,
    model_fingerprint: str,
    pad_token_id: int,
    pack_length: int = 1024,
    prefix_sharing: bool = False,
) -> FillResult:
    """Put the bottom states of every sequence of `pairs` into the model's prefix cache (see
    `attach_prefix_cache`): from the set's file under `cache_dir/prefix/` when it exists, else
    computed in packed batches and saved. With `prefix_sharing` a pair that shares its prompt is
    computed, saved and held with its prompt once (`fill_units`)."""
    cache: PrefixCache = model.prefix_cache
    units = fill_units(pairs, prefix_sharing)
    path = Path(cache_dir) / "prefix" / f"{set_key(model_fingerprint, cache.n_layers, units)}.safetensors"
    if path.is_file():
        data = load_file(str(path))
        states, offsets = data["states"], data["offsets"].tolist()
        if len(offsets) == len(units) + 1 and offsets[-1] == states.shape[0]:
            for i, unit in enumerate(units):
                _store(cache, unit, states[offsets[i] : offsets[i + 1]])
            return FillResult(path, hit=True)
        log.warning("prefix cache %s does not match its data set; recomputing", path)
    with eval_mode(model):
        per_unit = _compute_set(model, cache.n_layers, units, pad_token_id, pack_length)
    offsets = torch.tensor([0, *torch.cumsum(torch.tensor([u.tokens for u in units]), 0).tolist()])
    with atomic_path(path) as tmp:
        save_file({"states": torch.cat(per_unit).contiguous(), "offsets": offsets}, str(tmp))
    for unit, states in zip(units, per_unit, strict=True):
        _store(cache, unit, states)
    return FillResult(path, hit=False)


def _compute_set(
    model: nn.Module, n_layers: int, units: list[Unit], pad_token_id: int, pack_length: int
) -> list[Tensor]:
    """Every unit's bottom states (fp32, on the host), in packed passes of four rows (shortest
    first): sequences alone in block-causal rows, shared pairs in prefix-shared ones."""
    decoder = model.decoder()
    implementation = model.config._attn_implementation
    per_unit: list[Tensor | None] = [None] * len(units)
    with tqdm(total=len(units), desc=f"frozen-prefix states ({n_layers} layers)", unit="unit") as bar:
        for shared in (False, True):
            todo = [i for i, u in enumerate(units) if bool(u.second) == shared]
            for batch in length_batches([units[i].tokens for i in todo], max_tokens=4 * pack_length, packed=True):
                batch = [todo[j] for j in batch]
                if shared:
                    first, second = [list(units[i].first) for i in batch], [list(units[i].second) for i in batch]
                    starts = [units[i].prompt for i in batch]
                    rows = pack_shared_rows(first, second, starts, starts, pad_token_id, pack_length)
                    mask = backbone_mask(rows["attention"].to(model.device), implementation, rows["segments"])
                else:
                    rows = pack_rows([list(units[i].first) for i in batch], [0] * len(batch), pad_token_id, pack_length)
                    mask = None
                bottom = bottom_states(
                    decoder, n_layers, input_ids=rows["input_ids"].to(model.device), attention_mask=mask,
                    position_ids=rows["position_ids"].to(model.device),
                )  # fmt: skip
                ends = rows["seq_ends"].tolist()
                for j, i in enumerate(batch):  # a unit ends where its last sequence does
                    r, c = ends[len(batch) + j] if shared else ends[j]
                    per_unit[i] = bottom[r, c + 1 - units[i].tokens : c + 1].float().cpu()
                bar.update(len(batch))
    return per_unit  # type: ignore[return-value]


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
