"""Turn preference pairs into token ids (chat template aware) and collate `[chosen; rejected]`."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import datasets
import torch

from hafrm.data.shared import balanced_rows, pack_shared_rows
from hafrm.data.types import PreferencePair

PLAIN_TEMPLATE_HELP = "'<role>: <content>' lines, then 'assistant: ' and the response + EOS"


@dataclass(kw_only=True)
class TokenizedPair:
    chosen_ids: list[int]
    rejected_ids: list[int]
    chosen_prompt_len: int  # response tokens start at this index
    rejected_prompt_len: int
    margin: float | None
    source: str
    tag: str  # skill (built-in task) or source, for per-group metrics
    index: int  # position in the input list
    subset: str = ""  # a finer label within a source (RewardBench subset, Auto-J scenario)
    group: str = ""  # hash of the split group (or prompt): pairs that must stay on one side together
    origin: str = ""  # where the pair was read ("file:line"), for error messages; "" for the built-in task


@dataclass(kw_only=True)
class TokenizeResult:
    pairs: list[TokenizedPair]
    dropped: Counter = field(default_factory=Counter)  # (source, reason) -> pairs dropped
    truncated: Counter = field(default_factory=Counter)  # (source, "prompt" | "response") -> pairs cut

    def summary(self) -> list[str]:
        """One line per source and reason, for logs and `hafrm data inspect`."""
        lines = [f"{src or 'data'}: {n} pair(s) dropped: {why}" for (src, why), n in sorted(self.dropped.items())]
        lines += [
            f"{src or 'data'}: {n} pair(s) with the {what} truncated"
            + (" (kept its end)" if what == "prompt" else " (kept its start and the closing tokens)")
            for (src, what), n in sorted(self.truncated.items())
        ]
        return lines


def _messages(messages: Sequence[dict[str, str]], system_prompt: str | None) -> list[dict[str, str]]:
    msgs = list(messages)
    if system_prompt and (not msgs or msgs[0]["role"] != "system"):
        msgs = [{"role": "system", "content": system_prompt}, *msgs]
    return msgs


def _plain(messages: Sequence[dict[str, str]]) -> str:
    return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: "


class PairTokenizer:
    """Encodes prompts with the tokenizer's chat template (or a plain one) and appends responses."""

    def __init__(self, tokenizer: Any, max_length: int, max_prompt_length: int, system_prompt: str | None = None):
        self.tok = tokenizer
        self.max_length = max_length
        self.max_prompt_length = max_prompt_length
        self.system_prompt = system_prompt
        self.has_template = bool(getattr(tokenizer, "chat_template", None))
        self.closing = self._closing_ids()

    def _closing_ids(self) -> list[int]:
        """The tokens that close an assistant turn (ChatML: `<|im_end|>`, `\\n`); kept when a response is cut."""
        marker = "Zq9"
        if self.has_template:
            try:
                text = self.tok.apply_chat_template(
                    [{"role": "user", "content": "a"}, {"role": "assistant", "content": marker}], tokenize=False
                )
            except Exception:  # a template that rejects this conversation: keep the last token only
                text = ""
            if marker in text:
                return self._ids(text[text.rindex(marker) + len(marker) :]) or [self.tok.eos_token_id]
        return [self.tok.eos_token_id]

    def _ids(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def encode(self, messages: list[dict[str, str]], response: str) -> tuple[list[int], int]:
        """Token ids of prompt + response, and the prompt length (where the response starts)."""
        messages = _messages(messages, self.system_prompt)
        if self.has_template:
            prompt_text = self.tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            full_text = self.tok.apply_chat_template(
                [*messages, {"role": "assistant", "content": response}], tokenize=False
            )
            prompt_ids = self._ids(prompt_text)
            full_ids = self._ids(full_text)
            if full_ids[: len(prompt_ids)] != prompt_ids or not full_text.startswith(prompt_text):
                # The template renders the last turn differently: fall back to prompt + response.
                full_ids = prompt_ids + self._ids(response) + [self.tok.eos_token_id]
        else:
            prompt_ids = self._ids(_plain(messages))
            if self.tok.bos_token_id is not None:
                prompt_ids = [self.tok.bos_token_id, *prompt_ids]
            full_ids = prompt_ids + self._ids(response) + [self.tok.eos_token_id]
        return full_ids, len(prompt_ids)

    def truncate(self, ids: list[int], prompt_len: int) -> tuple[list[int], int, set[str]]:
        """Fit `max_length`: cut the prompt's start first, then the response's end before its closing tokens.

        The closing tokens of the turn (the last of them is where the reward is read) always stay,
        so a truncated response still ends the way every training sequence does.
        """
        cut: set[str] = set()
        if prompt_len > self.max_prompt_length:
            ids, prompt_len = ids[prompt_len - self.max_prompt_length :], self.max_prompt_length
            cut.add("prompt")
        if len(ids) > self.max_length:
            n = len(self.closing)
            tail = ids[-n:] if ids[-n:] == self.closing and prompt_len + n < self.max_length else ids[-1:]
            ids = ids[: self.max_length - len(tail)] + tail
            cut.add("response")
        return ids, prompt_len, cut

    def tokenize(self, pairs: Sequence[PreferencePair]) -> TokenizeResult:
        result = TokenizeResult(pairs=[])
        for i, pair in enumerate(pairs):
            c_ids, c_len, cut_c = self.truncate(*self.encode(pair.prompt, pair.chosen))
            r_ids, r_len, cut_r = self.truncate(*self.encode(pair.prompt, pair.rejected))
            for what in cut_c | cut_r:
                result.truncated[(pair.source, what)] += 1
            if len(c_ids) == c_len or len(r_ids) == r_len:
                result.dropped[(pair.source, "empty response after tokenisation")] += 1
                continue
            if c_ids == r_ids:
                result.dropped[(pair.source, "identical after truncation")] += 1
                continue
            tag = str(pair.meta.get("skill") or pair.source or "all")
            subset = str(pair.meta.get("subset") or "")
            key = str(pair.meta.get("group") or pair.prompt_text())
            group = hashlib.blake2b(key.encode(), digest_size=8).hexdigest()
            result.pairs.append(
                TokenizedPair(
                    chosen_ids=c_ids,
                    rejected_ids=r_ids,
                    chosen_prompt_len=c_len,
                    rejected_prompt_len=r_len,
                    margin=pair.margin,
                    source=pair.source,
                    tag=tag,
                    index=i,
                    subset=subset,
                    group=group,
                    origin=pair.origin,
                )  # fmt: skip
            )
        return result


def pair_features(pairs: Sequence[TokenizedPair], ref: torch.Tensor | None) -> list[dict[str, Any]]:
    """Rows for a Trainer dataset; `ref` is (N, 2) reference log-probs or None."""
    rows = []
    for i, p in enumerate(pairs):
        row: dict[str, Any] = {
            "chosen_ids": p.chosen_ids,
            "rejected_ids": p.rejected_ids,
            "chosen_prompt_len": p.chosen_prompt_len,
            "rejected_prompt_len": p.rejected_prompt_len,
            "index": i,
        }
        if p.margin is not None:
            row["margin"] = p.margin
        if ref is not None:
            row["ref_chosen"], row["ref_rejected"] = float(ref[i, 0]), float(ref[i, 1])
        rows.append(row)
    return rows


def pad_rows(
    seqs: Sequence[list[int]], starts: Sequence[int], pad_id: int, padding_side: str = "right"
) -> dict[str, torch.Tensor]:
    """Pad token rows to one length: input_ids, attention_mask, and response_mask (1 from `start`)."""
    T = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(seqs), T), dtype=torch.long)
    response_mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for row, (seq, start) in enumerate(zip(seqs, starts, strict=True)):
        offset = T - len(seq) if padding_side == "left" else 0
        input_ids[row, offset : offset + len(seq)] = torch.tensor(seq)
        attention_mask[row, offset : offset + len(seq)] = 1
        response_mask[row, offset + start : offset + len(seq)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "response_mask": response_mask}


def pack_rows(
    seqs: Sequence[list[int]], starts: Sequence[int], pad_id: int, row_length: int
) -> dict[str, torch.Tensor]:
    """Pack sequences back to back into rows of at most `row_length` tokens (`balanced_rows`).

    Returns input_ids, position_ids (restarting at 0 for every sequence), response_mask,
    segment_ids (the sequence of each token; -1 on the padding that evens the rows out) and
    seq_ends (row, column of each sequence's last token). A sequence longer than `row_length`
    gets a row of its own. The padding at a row's end is a block of its own (its positions
    restart too), so no real token attends to it.
    """
    rows = balanced_rows([len(s) for s in seqs], row_length)
    L = max(sum(len(seqs[i]) for i in row) for row in rows)
    shape = (len(rows), L)
    input_ids = torch.full(shape, pad_id, dtype=torch.long)
    position_ids = torch.zeros(shape, dtype=torch.long)
    response_mask = torch.zeros(shape, dtype=torch.long)
    segment_ids = torch.full(shape, -1, dtype=torch.long)
    seq_ends = torch.zeros((len(seqs), 2), dtype=torch.long)
    for r, members in enumerate(rows):
        col = 0
        for i in members:
            n = len(seqs[i])
            input_ids[r, col : col + n] = torch.tensor(seqs[i])
            position_ids[r, col : col + n] = torch.arange(n)
            response_mask[r, col + starts[i] : col + n] = 1
            segment_ids[r, col : col + n] = i
            seq_ends[i] = torch.tensor([r, col + n - 1])
            col += n
        position_ids[r, col:] = torch.arange(L - col)
    return {
        "input_ids": input_ids,
        "position_ids": position_ids,
        "response_mask": response_mask,
        "segment_ids": segment_ids,
        "seq_ends": seq_ends,
    }


def pair_dataset(rows: list[dict[str, Any]]) -> datasets.Dataset:
    """Rows as a `datasets.Dataset` with a `length` column, for the Trainer's length grouping."""
    for row in rows:
        row["length"] = len(row["chosen_ids"]) + len(row["rejected_ids"])
    return datasets.Dataset.from_list(rows)


@dataclass
class PairCollator:
    """Stacks a batch of B pairs into 2B sequences, chosen first then rejected: padded rows, or packed."""

    pad_token_id: int
    padding_side: str = "right"
    pack_length: int | None = None  # pack into rows of this many tokens instead of padding
    prefix_sharing: bool = False  # with pack_length: a pair's shared prompt once (hafrm.data.shared)

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        seqs = [f["chosen_ids"] for f in features] + [f["rejected_ids"] for f in features]
        starts = [f["chosen_prompt_len"] for f in features] + [f["rejected_prompt_len"] for f in features]
        if self.pack_length and self.prefix_sharing:
            B = len(features)
            batch = pack_shared_rows(seqs[:B], seqs[B:], starts[:B], starts[B:], self.pad_token_id, self.pack_length)
        elif self.pack_length:
            batch = pack_rows(seqs, starts, self.pad_token_id, self.pack_length)
        else:
            batch = pad_rows(seqs, starts, self.pad_token_id, self.padding_side)  # (2B, T) each
        batch["index"] = torch.tensor([f["index"] for f in features])  # (B,)
        if all(f.get("margin") is not None for f in features):
            batch["margin"] = torch.tensor([f["margin"] for f in features], dtype=torch.float32)
        if all(f.get("ref_chosen") is not None for f in features):
            batch["ref_chosen"] = torch.tensor([f["ref_chosen"] for f in features], dtype=torch.float32)
            batch["ref_rejected"] = torch.tensor([f["ref_rejected"] for f in features], dtype=torch.float32)
        return batch
