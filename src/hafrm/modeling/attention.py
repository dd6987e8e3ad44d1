"""The attention mask a prefix-shared batch hands the backbone, in the form its attention
implementation takes (hafrm.data.shared builds who sees whom as an (R, L, L) boolean).

sdpa and eager get that boolean as a dense (R, 1, L, L) mask. flex_attention gets a BlockMask
built from per-token segment and branch ids, so its kernel skips the blocks nobody attends to.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn.attention.flex_attention import BlockMask, create_block_mask


def backbone_mask(attention: Tensor, implementation: str, segments: Tensor | None = None) -> Tensor | BlockMask:
    """(R, L, L) boolean, True where a token may attend, as the mask of the backbone's attention:
    (R, 1, L, L) boolean for sdpa, additive (0 or the float32 minimum) for eager (it adds it to the
    scores), a BlockMask from the rows' `segments` (S, 5) for flex_attention."""
    if implementation == "flex_attention":
        if segments is None:
            raise ValueError("flex_attention needs the prefix-shared rows' segments to build its block mask")
        R, L, _ = attention.shape
        return shared_block_mask(segments, R, L, attention.device)
    mask = attention[:, None]
    if implementation == "sdpa":
        return mask
    return torch.zeros(mask.shape, device=mask.device).masked_fill(~mask, torch.finfo(torch.float32).min)


def token_layout(segments: Tensor, n_rows: int, row_length: int) -> tuple[Tensor, Tensor]:
    """Per token of the rows: its segment (the padding: a distinct negative id each, so it sees
    itself only) and its part (0 the prompt, or all of an unshared sequence; 1 the chosen response;
    2 the rejected response), (R, L) each, from `segments` (row, start, first length, second
    length, prompt length; see `pack_shared_rows`)."""
    seg = -1 - torch.arange(row_length).repeat(n_rows, 1)  # (R, L)
    part = torch.zeros(n_rows, row_length, dtype=torch.long)
    for k, (r, a, n1, n2, p) in enumerate(segments.tolist()):
        seg[r, a : a + n1 + n2] = k
        if n2:  # shared: [prompt | chosen response | rejected response]
            part[r, a + p : a + n1] = 1
            part[r, a + n1 : a + n1 + n2] = 2
    return seg, part


def shared_block_mask(segments: Tensor, n_rows: int, row_length: int, device: torch.device | str) -> BlockMask:
    """The prefix-shared rows' mask as a flex_attention BlockMask: a token sees the earlier tokens
    of its segment that are in the prompt or in its own part (the rejected branch never sees the
    chosen). Equals `pack_shared_rows`' attention (with its default isolate_branches)."""
    seg, part = (t.to(device) for t in token_layout(segments, n_rows, row_length))

    def mask_mod(b, h, q, kv):
        return (seg[b, q] == seg[b, kv]) & (kv <= q) & ((part[b, kv] == 0) | (part[b, kv] == part[b, q]))

    return create_block_mask(mask_mod, B=n_rows, H=None, Q_LEN=row_length, KV_LEN=row_length, device=device)
