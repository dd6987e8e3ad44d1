"""Reference log-probs: computed once from the frozen initial model and cached on disk.

The cache key hashes the model (config and every weight), the tokenised data and the log-prob
code version, so no reference model is held in memory during training, and a second run (or
another mode on the same data) reuses the file.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers.utils.logging import tqdm  # the bars of the Trainer: shown in logs too

from hafrm import distributed
from hafrm.data.tokenize import PairCollator, TokenizedPair, pair_features
from hafrm.fileio import atomic_path
from hafrm.modeling.batching import eval_mode, length_batches
from hafrm.modeling.hybrid import HybridRewardModel, model_inputs
from hafrm.modeling.lora import has_adapters, merged_state_dict

log = logging.getLogger(__name__)
LOGPROB_VERSION = "2"  # bump when the log-prob computation changes (2: packed passes)


@dataclass(kw_only=True)
class ReferenceResult:
    logps: torch.Tensor  # (N, 2): chosen, rejected summed response log-probs
    path: Path
    hit: bool


def model_fingerprint(model: HybridRewardModel) -> str:
    """Hash of the backbone's config and weights (the policy that becomes the reference). A
    backbone with LoRA adapters is hashed as the model it computes (the adapters merged in), so
    an untrained LoRA model shares its base model's reference and frozen-prefix caches."""
    h = hashlib.blake2b(digest_size=16)
    h.update(model.backbone.config.to_json_string(use_diff=False).encode())
    state = merged_state_dict(model.backbone) if has_adapters(model.backbone) else model.backbone.state_dict()
    for name, tensor in sorted(state.items()):
        h.update(name.encode())
        h.update(tensor.detach().float().contiguous().numpy().tobytes())
    return h.hexdigest()


def data_fingerprint(pairs: Sequence[TokenizedPair]) -> str:
    h = hashlib.blake2b(digest_size=16)
    for p in pairs:
        h.update(json.dumps([p.chosen_ids, p.rejected_ids, p.chosen_prompt_len, p.rejected_prompt_len]).encode())
    return h.hexdigest()


@torch.no_grad()
def compute_logps(
    model: HybridRewardModel,
    pairs: Sequence[TokenizedPair],
    pad_token_id: int,
    batch_size: int = 16,
    pack_length: int | None = None,
    prefix_sharing: bool = False,
) -> torch.Tensor:
    """Summed response log-probs for every pair, (N, 2); batches are formed by length, and
    packed into rows of `pack_length` tokens when it is given (padded otherwise). With several
    processes each rank computes its share of the pairs and every rank returns all of them
    (the model is the plain one here, before any engine wraps it)."""
    features = pair_features(pairs, None)
    mine = distributed.shard(len(pairs))
    lengths = [max(len(pairs[i].chosen_ids), len(pairs[i].rejected_ids)) for i in mine]
    collate = PairCollator(pad_token_id, pack_length=pack_length, prefix_sharing=prefix_sharing)
    out = torch.zeros(len(features), 2)
    with tqdm(total=len(mine), desc="reference log-probs", unit="pair") as bar, eval_mode(model):
        for batch_idx in length_batches(lengths, batch_size):
            idx = [mine[j] for j in batch_idx]
            batch = collate([features[i] for i in idx])
            res = model(**model_inputs(batch))
            B = len(idx)
            out[idx, 0] = res.logps[:B].float().cpu()
            out[idx, 1] = res.logps[B:].float().cpu()
            bar.update(B)
    return distributed.gather_rows(out)


def reference_logps(
    model: HybridRewardModel,
    pairs: Sequence[TokenizedPair],
    cache_dir: Path,
    pad_token_id: int,
    batch_size: int = 16,
    fingerprint: str | None = None,
    pack_length: int | None = None,
    prefix_sharing: bool = False,
) -> ReferenceResult:
    """Load the cached reference log-probs for (model, data), or compute and cache them (in the
    prefix-shared layout if asked, as the steps or the evaluation that use them run; it rounds
    differently, so it has its own cache key)."""
    fingerprint = fingerprint or model_fingerprint(model)
    fingerprint += ":prefix-shared" if prefix_sharing and pack_length else ""
    key = hashlib.blake2b(
        f"{fingerprint}:{data_fingerprint(pairs)}:{LOGPROB_VERSION}".encode(), digest_size=16
    ).hexdigest()
    path = Path(cache_dir) / "reference" / f"{key}.safetensors"
    logps = load_file(str(path))["logps"] if path.is_file() else None
    if logps is not None and logps.shape != (len(pairs), 2):
        log.warning("reference cache %s has the wrong shape; recomputing", path)
        logps = None
    if distributed.all_true(logps is not None):  # every rank read it (else they compute it together)
        return ReferenceResult(logps=logps, path=path, hit=True)
    logps = compute_logps(model, pairs, pad_token_id, batch_size, pack_length, prefix_sharing)
    if distributed.is_main():
        with atomic_path(path) as tmp:  # a killed run never leaves a half-written cache file
            save_file({"logps": logps.contiguous()}, str(tmp), metadata={"pairs": str(len(pairs))})
    return ReferenceResult(logps=logps, path=path, hit=False)
