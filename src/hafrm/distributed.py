"""Several processes (`torchrun`, `accelerate launch`): the process group, which rank writes, and
how the ranks split a pass over a data set. In one process the world has size 1 and every helper
here does nothing or returns what one process would compute.

The Trainer runs the training steps (DDP, DeepSpeed or FSDP, as the launcher's config says);
what hafrm does around them uses these helpers:
- the reference log-probs and the evaluations: each rank computes every `world`-th pair
  (`shard`) and the ranks sum their rows (`gather_rows`), so every rank ends with all of them;
- the frozen-prefix states: rank 0 computes them and writes the disk cache, the others read it
  (`main_first`);
- files (the model folder, metrics.json, data.json) and the console: rank 0 only (`is_main`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist
from accelerate import PartialState


def launched_world_size() -> int:
    """The number of processes the launcher started (WORLD_SIZE), 1 when run directly."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_process_group() -> None:
    """Join the launcher's process group before anything is computed (gloo on CPU, the engine's
    backend on GPUs), and keep the other ranks' logging to errors. The Trainer takes the group over."""
    if launched_world_size() > 1 and not dist.is_initialized():
        cpu = not torch.cuda.is_available()
        PartialState(cpu=cpu, **({"backend": "gloo"} if cpu else {}))
    if not is_main():
        logging.getLogger("hafrm").setLevel(logging.ERROR)


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def sharded_engine() -> str | None:
    """The engine that shards parameters across the ranks (DeepSpeed ZeRO-3 or FSDP), if any, as
    `accelerate launch` announces it to the Trainer."""
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true"):
        return "FSDP"
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() in ("1", "true"):
        stage = os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "")  # unset with a DeepSpeed config file
        return None if stage in ("0", "1", "2") else f"DeepSpeed ZeRO-{stage or '3 (or a config file)'}"
    return None


@contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (it computes and writes a disk cache), the other ranks after
    it (they read what it wrote)."""
    if world_size() == 1:
        yield
        return
    if not is_main():
        dist.barrier()
    yield
    if is_main():
        dist.barrier()


def shard(n: int) -> list[int]:
    """The indices of an n-item pass this rank computes: every world-th, from its rank."""
    return list(range(rank(), n, world_size()))


def _reduce(t: torch.Tensor, op: Any) -> torch.Tensor:
    """`t` reduced over the ranks, on the device the backend needs (NCCL: the rank's GPU), back on t's."""
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else t.device
    out = t.to(device, copy=True)
    dist.all_reduce(out, op=op)
    return out.to(t.device)


def all_true(flag: bool) -> bool:
    """Whether `flag` holds on every rank."""
    if world_size() == 1:
        return flag
    return bool(_reduce(torch.tensor([int(flag)]), dist.ReduceOp.MIN).item())


def max_over_ranks(n: int) -> int:
    if world_size() == 1:
        return n
    return int(_reduce(torch.tensor([n]), dist.ReduceOp.MAX).item())


def gather_rows(t: torch.Tensor) -> torch.Tensor:
    """The full tensor from each rank's copy holding only its `shard` rows (zeros elsewhere)."""
    if world_size() == 1:
        return t
    return _reduce(t, dist.ReduceOp.SUM)


def mean_over_ranks(values: list[float]) -> list[float]:
    """Each value's mean over the ranks (every rank calls this at the same point, with as many values)."""
    if world_size() == 1:
        return values
    return (_reduce(torch.tensor(values, dtype=torch.float64), dist.ReduceOp.SUM) / world_size()).tolist()


def gather_lists(items: list[Any]) -> list[Any]:
    """Every rank's items, rank 0's first (small Python objects: per-batch metrics)."""
    if world_size() == 1:
        return items
    out: list[list[Any]] = [[] for _ in range(world_size())]
    dist.all_gather_object(out, items)
    return [x for part in out for x in part]
