"""Pairwise accuracy, the one rule every table and metric uses: a tie counts half right."""

from __future__ import annotations

from typing import Any


def accuracy(chosen: Any, rejected: Any) -> Any:
    """1.0 where `chosen` scores higher, 0.5 on a tie, 0.0 where it scores lower.

    Elementwise on tensors (a float tensor back) or numpy arrays (float64 back), or on two
    numbers (a float back); for lists, call it per pair.
    """
    return (chosen > rejected) + 0.5 * (chosen == rejected)
