"""The attention mask a prefix-shared batch hands the backbone, in the form its attention
implementation takes (hafrm.data.shared builds who sees whom as an (R, L, L) boolean)."""

from __future__ import annotations

import torch
from torch import Tensor


def backbone_mask(attention: Tensor, implementation: str) -> Tensor:
    """(R, L, L) boolean, True where a token may attend, as the (R, 1, L, L) mask of the backbone's
    attention: boolean for sdpa, additive (0 or the float32 minimum) for the others (eager adds it
    to the scores)."""
    mask = attention[:, None]
    if implementation == "sdpa":
        return mask
    return torch.zeros(mask.shape, device=mask.device).masked_fill(~mask, torch.finfo(torch.float32).min)
