"""Batches of similar length for scoring passes, and the model's eval mode around them."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from torch import nn


def length_batches(
    lengths: Sequence[int], batch_size: int | None = None, max_tokens: int | None = None, packed: bool = False
) -> list[list[int]]:
    """Indices by ascending length (ties in input order), cut into batches of at most `batch_size`
    rows and at most `max_tokens` tokens: rows x the longest when padded, the sum when `packed`.
    Sorting first keeps padding small and gives the same batches whatever the input order."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: list[list[int]] = []
    tokens = 0
    for i in order:
        current = batches[-1] if batches else None
        fits = current is not None and (batch_size is None or len(current) < batch_size)
        if fits and max_tokens is not None:  # ascending: i is the longest of its batch
            fits = (tokens + lengths[i] if packed else (len(current) + 1) * lengths[i]) <= max_tokens
        if fits:
            current.append(i)
            tokens += lengths[i]
        else:
            batches.append([i])
            tokens = lengths[i]
    return batches


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """`model` in eval mode for the block, then back in the mode it was in, even on an error
    (a scoring pass inside training must not leave dropout off for the steps that follow)."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)
