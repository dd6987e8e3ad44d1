"""Prefix-shared packing: a pair's prompt computed once, for both of its responses.

A pair whose two sequences start with the same prompt tokens becomes one segment
`[prompt | chosen | rejected]`: the rejected tokens attend to the prompt and to themselves, not
to the chosen ones, and their positions continue from the prompt's end, so every hidden state
equals the one its own sequence gives alone (causality: the prompt's states do not depend on what
follows). A pair whose prompts differ in tokens stays two segments. Segments are packed back to
back into rows; the attention mask says which token sees which.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def first_fit(lengths: Sequence[int], row_length: int) -> list[list[int]]:
    """Items of these lengths in rows of at most `row_length` (first fit, in order); an item
    longer than a row gets a row of its own."""
    rows: list[list[int]] = []
    used: list[int] = []
    for i, n in enumerate(lengths):
        for r, u in enumerate(used):
            if u + n <= row_length:
                rows[r].append(i)
                used[r] += n
                break
        else:
            rows.append([i])
            used.append(n)
    return rows


def balanced_rows(lengths: Sequence[int], row_length: int) -> list[list[int]]:
    """Items of these lengths in as many rows as `first_fit` needs, spread so the longest row is
    as short as it can be made (longest item first, into the shortest row it fits): every row is
    padded to the longest, so one nearly empty last row would cost a whole row of padding. Falls
    back to `first_fit`'s rows where spreading does not shorten them; each row keeps input order."""
    rows = first_fit(lengths, row_length)
    if len(rows) < 2:
        return rows
    spread: list[list[int]] = [[] for _ in rows]
    used = [0] * len(rows)
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        fits = [r for r in range(len(rows)) if used[r] + lengths[i] <= row_length or not spread[r]]
        if not fits:
            return rows
        r = min(fits, key=lambda r: used[r])
        spread[r].append(i)
        used[r] += lengths[i]
    if max(used) >= max(sum(lengths[i] for i in row) for row in rows):
        return rows
    return [sorted(row) for row in sorted(spread, key=min)]


def shares_prompt(chosen: Sequence[int], rejected: Sequence[int], chosen_start: int, rejected_start: int) -> bool:
    """Whether the two sequences have the same prompt tokens, and each a response after it."""
    return (
        chosen_start == rejected_start
        and 0 < chosen_start < min(len(chosen), len(rejected))
        and list(chosen[:chosen_start]) == list(rejected[:rejected_start])
    )


def pack_shared_rows(
    chosen: Sequence[list[int]],
    rejected: Sequence[list[int]],
    chosen_starts: Sequence[int],
    rejected_starts: Sequence[int],
    pad_id: int,
    row_length: int,
    isolate_branches: bool = True,
) -> dict[str, torch.Tensor]:
    """B pairs as prefix-shared segments packed into rows of at most `row_length` tokens
    (`balanced_rows`; a longer segment gets a row of its own). Sequence i is pair i's chosen, B + i its rejected.

    Returns input_ids and position_ids (R, L); attention (R, L, L), True where the row's token j
    (the middle index) may attend to token i (the last); seq_ends (2B, 2), the row and column of
    each sequence's last token; and, for the log-probs, one entry per response token: logp_rows,
    logp_cols (where it is predicted: the column before it, and for a rejected branch's first
    token the prompt's last), logp_targets (the token) and logp_seq (its sequence). `shared` (B,)
    says which pairs share their prompt. `segments` (S, 5): each segment's row, start column, the
    length of its first sequence (the chosen, prompt included), of its second (the rejected's
    response; 0 in an unshared segment) and of the shared prompt (0 likewise).
    `isolate_branches=False` lets the rejected branch see the chosen one: wrong, and there only
    for the tests that show the mask matters.
    """
    B = len(chosen)
    shared = [shares_prompt(chosen[i], rejected[i], chosen_starts[i], rejected_starts[i]) for i in range(B)]
    segments: list[list[tuple[int, list[int], int]]] = []  # per segment: (sequence, tokens, start)
    for i in range(B):
        if shared[i]:
            p = chosen_starts[i]
            segments.append([(i, list(chosen[i]), p), (B + i, list(rejected[i][p:]), 0)])
        else:
            segments += [[(i, list(chosen[i]), chosen_starts[i])], [(B + i, list(rejected[i]), rejected_starts[i])]]
    lengths = [sum(len(tokens) for _, tokens, _ in seg) for seg in segments]
    rows = balanced_rows(lengths, row_length)
    L = max(sum(lengths[k] for k in row) for row in rows)
    input_ids = torch.full((len(rows), L), pad_id, dtype=torch.long)
    position_ids = torch.zeros((len(rows), L), dtype=torch.long)
    attention = torch.zeros((len(rows), L, L), dtype=torch.bool)
    seq_ends = torch.zeros((2 * B, 2), dtype=torch.long)
    logp_rows, logp_cols, logp_targets, logp_seq = [], [], [], []
    spans: list[list[int]] = []  # per segment: row, start column, first length, second length, prompt length
    causal = torch.ones(L, L, dtype=torch.bool).tril()
    for r, members in enumerate(rows):
        col = 0
        for k in members:
            seg_start = col
            prompt_end = None  # the column of the shared prompt's last token, in a shared segment
            parts = segments[k]
            spans.append([r, col, len(parts[0][1]), len(parts[1][1]) if len(parts) == 2 else 0,
                          parts[0][2] if len(parts) == 2 else 0])  # fmt: skip
            for branch, (seq, tokens, start) in enumerate(segments[k]):
                n = len(tokens)
                input_ids[r, col : col + n] = torch.tensor(tokens)
                if branch == 0:
                    position_ids[r, col : col + n] = torch.arange(n)
                    attention[r, col : col + n, seg_start : col + n] = causal[:n, :n]
                    if len(segments[k]) == 2:
                        prompt_end = col + start - 1
                    predicted_from = list(range(col + start - 1, col + n - 1))
                else:  # the rejected branch of a shared segment: after the prompt, beside the chosen
                    p = prompt_end - seg_start + 1
                    position_ids[r, col : col + n] = torch.arange(p, p + n)
                    attention[r, col : col + n, seg_start : prompt_end + 1] = True
                    attention[r, col : col + n, col : col + n] = causal[:n, :n]
                    if not isolate_branches:
                        attention[r, col : col + n, prompt_end + 1 : col] = True
                    predicted_from = [prompt_end, *range(col, col + n - 1)]
                targets = tokens[start:] if branch == 0 else tokens
                logp_rows += [r] * len(targets)
                logp_cols += predicted_from
                logp_targets += targets
                logp_seq += [seq] * len(targets)
                seq_ends[seq] = torch.tensor([r, col + n - 1])
                col += n
        pad = torch.arange(col, L)
        attention[r, pad, pad] = True  # the padding that evens the rows out sees itself only
        position_ids[r, col:] = torch.arange(L - col)

    def long(values: list[int]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.long)

    return {
        "input_ids": input_ids,
        "position_ids": position_ids,
        "attention": attention,
        "seq_ends": seq_ends,
        "logp_rows": long(logp_rows),
        "logp_cols": long(logp_cols),
        "logp_targets": long(logp_targets),
        "logp_seq": long(logp_seq),
        "shared": torch.tensor(shared, dtype=torch.bool),
        "segments": long(spans).reshape(-1, 5),
    }
