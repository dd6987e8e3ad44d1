"""Checkpoints: which are whole, what they hold, their disk use, and the sampler a resume redraws.

`HafTrainer._save_checkpoint` writes each checkpoint into `.tmp-checkpoint-N` and renames it when
complete; a `--resume` takes the newest folder named checkpoint-N that holds the Trainer's state.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from transformers.trainer_pt_utils import LengthGroupedSampler
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from hafrm.modeling.hybrid import HybridRewardModel

log = logging.getLogger(__name__)
TRAINER_STATE_NAME = "trainer_state.json"  # the Trainer's; written last, so a checkpoint with it is whole
STAGING_PREFIX = ".tmp-"  # a checkpoint being written: `.tmp-checkpoint-N`, renamed when whole


class ResumableLengthGroupedSampler(LengthGroupedSampler):
    """transformers' length-grouped sampler, whose order a resumed run can draw again.

    It draws each epoch's order from the global torch RNG when the epoch starts, and a run resumed
    in the middle of epoch e > 0 starts from other RNG states than the uninterrupted run had
    there, so it would see other batches. This sampler keeps the RNG state of its epoch's draw;
    the trainer stores it in each checkpoint, and a resumed run draws that epoch from it again
    (the Trainer then restores the checkpoint's RNG states, as it does anyway)."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.epoch = 0
        self.drawn: dict[str, Any] | None = None  # {"epoch", "rng"}: the current epoch's draw
        self.redraw: dict[str, Any] | None = None  # a checkpoint's draw, for the epoch it was made in

    def set_epoch(self, epoch: int) -> None:  # accelerate's DataLoaderShard calls it before each epoch
        self.epoch = epoch

    def __iter__(self):
        if self.redraw is not None and self.redraw["epoch"] == self.epoch:
            torch.set_rng_state(self.redraw["rng"])
        self.redraw = None
        self.drawn = {"epoch": self.epoch, "rng": torch.get_rng_state()}
        return super().__iter__()


def complete_checkpoints(output_dir: str | os.PathLike) -> list[str]:
    """The checkpoints of a run folder that were written to the end, oldest first: folders named
    checkpoint-N that hold the Trainer's state (a folder without it, from a writer that is not
    atomic, is left out and logged)."""
    if not os.path.isdir(output_dir):
        return []
    found = []
    for name in os.listdir(output_dir):
        step = name.removeprefix(f"{PREFIX_CHECKPOINT_DIR}-")
        path = os.path.join(output_dir, name)
        if step.isdigit() and os.path.isdir(path):
            if os.path.isfile(os.path.join(path, TRAINER_STATE_NAME)):
                found.append((int(step), path))
            else:
                log.warning("%s is incomplete (no %s): not resumed from", path, TRAINER_STATE_NAME)
    return [path for _, path in sorted(found)]


def checkpoint_sizes(checkpoint: str | os.PathLike) -> str:
    """A checkpoint's disk use, as "812 MiB: model 540, optimizer 270, other 2"."""
    sizes = {"model": 0, "optimizer": 0, "other": 0}
    for f in Path(checkpoint).iterdir():
        if f.is_file():
            kind = "model" if f.suffix == ".safetensors" else "optimizer" if f.name == "optimizer.pt" else "other"
            sizes[kind] += f.stat().st_size
    mib = {k: v / 2**20 for k, v in sizes.items()}
    return f"{sum(mib.values()):.0f} MiB: " + ", ".join(f"{k} {v:.0f}" for k, v in mib.items())


def last_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """The newest complete checkpoint of a run folder, or None."""
    done = complete_checkpoints(output_dir)
    return done[-1] if done else None


def frozen_weights_match(model: HybridRewardModel, checkpoint: str | os.PathLike) -> bool:
    """Whether a checkpoint holds the same frozen (requires_grad False) backbone weights as `model`,
    bit for bit: the frozen-prefix states computed from `model` then hold for the checkpoint too."""
    # (a LoRA-wrapped layer's own weight is frozen from the start and saved merged: left out)
    frozen = {n: p for n, p in model.backbone.named_parameters() if not p.requires_grad and ".base_layer." not in n}
    seen = set()
    for f in sorted(Path(checkpoint).glob("model*.safetensors")):
        with safe_open(str(f), framework="pt") as weights:
            for name in set(weights.keys()) & set(frozen):
                if not torch.equal(weights.get_tensor(name), frozen[name].detach().cpu()):
                    return False
                seen.add(name)
    return bool(frozen) and seen == set(frozen)
