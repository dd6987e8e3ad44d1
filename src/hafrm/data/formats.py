"""Preference-data schemas: detect a record's format and normalise it to a `PreferencePair`.

Each format is a converter `(record, where, options) -> PreferencePair` that either returns a pair,
raises `Drop` (an expected, counted drop such as a tie), or raises `RecordError` (bad input, with
the file:line, the field and a `kind` for counting). Formats are detected from the fields of the
first record, or named by the user.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from hafrm.data.types import PreferencePair
from hafrm.errors import DataError

PKU_LABELS = ("safer", "better")


class RecordError(DataError):
    """One bad record. `kind` names the problem for counting ("missing field", "empty response" ...)."""

    def __init__(self, where: str, kind: str, message: str):
        super().__init__(f"{where}: {message}")
        self.kind = kind
        self.where = where


class Drop(Exception):
    """A record that is valid but yields no pair (a tie, a filtered pair); counted by `reason`."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, kw_only=True)
class DataOptions:
    """How to read a source. The CLI and `HafConfig` fill this in."""

    format: str | None = None  # None: detect from the first record
    mapping: dict[str, str] = field(default_factory=dict)  # target field -> source path ("answers.0")
    on_error: str = "raise"  # or "skip": count bad records per kind and go on
    pku_label: str = "safer"  # PKU-SafeRLHF native: which preference id to use
    pku_safety_filter: bool = False  # keep only pairs where exactly one response is safe (the paper's)
    max_pairs: int | None = None  # per-source cap after conversion (a seeded sample, order kept)
    seed: int = 0


@dataclass(kw_only=True)
class Notes:
    """Per-record observations that do not drop the pair but must be reported (e.g. HH divergence)."""

    counts: Counter = field(default_factory=Counter)


# ------------------------------------------------------------------------------------ field access
def get(record: dict, name: str, where: str) -> Any:
    if name not in record:
        raise RecordError(where, "missing field", f"missing field '{name}'")
    return record[name]


def text(record: dict, name: str, where: str, *, allow_empty: bool = False) -> str:
    value = get(record, name, where)
    if not isinstance(value, str):
        raise RecordError(where, "not a string", f"field '{name}' must be a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise RecordError(where, "empty response" if _is_response(name) else "empty field", f"field '{name}' is empty")
    return value


def _is_response(name: str) -> bool:
    return any(k in name for k in ("chosen", "rejected", "response", "output", "conversation"))


def label(record: dict, name: str, where: str, accepted: Sequence[Any]) -> Any:
    """An integer (or string) label; digit strings from CSV count as integers."""
    value = get(record, name, where)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    elif isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or value not in accepted:
        raise RecordError(where, "bad label", f"field '{name}' must be one of {list(accepted)}, got {value!r}")
    return value


def messages(value: Any, where: str, name: str) -> list[dict[str, str]]:
    """A chat as a list of {role, content}; a bare string is one user turn."""
    if isinstance(value, str):
        if not value.strip():
            raise RecordError(where, "empty field", f"field '{name}' is empty")
        return [{"role": "user", "content": value}]
    ok = (
        isinstance(value, list)
        and value
        and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value
        )
    )
    if not ok:
        raise RecordError(
            where,
            "not a string",
            f"field '{name}' must be a string or a list of {{role, content}} messages (not empty)",
        )
    return [{"role": m["role"], "content": m["content"]} for m in value]


def _pair(
    prompt, chosen, rejected, where, *, margin=None, source="", meta=None, fields=("chosen", "rejected")
) -> PreferencePair:
    """The pair, once both responses are non-empty and differ; `fields` name them in errors."""
    for name, value in zip(fields, (chosen, rejected), strict=True):
        if not value.strip():
            raise RecordError(where, "empty response", f"field '{name}' is empty")
    if chosen == rejected:
        raise RecordError(where, "identical responses", f"fields '{fields[0]}' and '{fields[1]}' are identical")
    if not math.isfinite(margin if margin is not None else 0.0):
        raise RecordError(where, "not a number", f"field 'margin' must be finite, got {margin}")
    return PreferencePair(prompt, chosen, rejected, margin=margin, source=source, meta=meta or {})


# ----------------------------------------------------------------------------------- conversations
def _render_turns(turns: Sequence[dict[str, str]]) -> str:
    """Later turns kept inside a response, written the way HH writes transcripts."""
    names = {"user": "Human", "assistant": "Assistant"}
    return "".join(f"\n\n{names.get(m['role'], m['role'])}: {m['content']}" for m in turns)


def split_conversations(
    a: list[dict[str, str]], b: list[dict[str, str]], where: str, notes: Notes
) -> tuple[list[dict[str, str]], str, str]:
    """(shared prompt, response a, response b) of two conversations that should share a history.

    The prompt is the longest shared prefix of whole turns that ends with a user turn. Usually each
    side then has one assistant turn left. When the two differ earlier (multi-turn Arena, a few HH
    transcripts), each response is its first differing assistant turn followed by the later turns,
    so nothing is lost, and the pair is counted under "differ before the last turn".
    """
    for name, conv in (("a", a), ("b", b)):
        if conv[-1]["role"] != "assistant":
            raise RecordError(where, "bad conversation", f"conversation {name} does not end with an assistant turn")
    shared = 0
    while shared < min(len(a), len(b)) - 1 and a[shared] == b[shared]:
        shared += 1
    while shared > 0 and a[shared - 1]["role"] != "user":
        shared -= 1  # the prompt must end with a user turn
    if shared == 0:
        raise RecordError(where, "bad conversation", "the two conversations share no opening user turn")
    rest_a, rest_b = a[shared:], b[shared:]
    if len(rest_a) > 1 or len(rest_b) > 1:
        notes.counts["differ before the last turn (later turns kept in the response)"] += 1
    for rest in (rest_a, rest_b):
        if rest[0]["role"] != "assistant":
            raise RecordError(where, "bad conversation", "the turn after the shared history is not the assistant's")
    return (
        a[:shared],
        rest_a[0]["content"] + _render_turns(rest_a[1:]),
        rest_b[0]["content"] + _render_turns(rest_b[1:]),
    )


_HH_TURN = re.compile(r"\n\n(Human|Assistant): ?")


def hh_turns(transcript: str, where: str, name: str) -> list[dict[str, str]]:
    """'\\n\\nHuman: ...\\n\\nAssistant: ...' to chat messages."""
    parts = _HH_TURN.split(transcript)
    if len(parts) < 3:
        raise RecordError(
            where, "bad conversation", f"field '{name}' is not an HH transcript (no '\\n\\nHuman:' turns)"
        )
    if parts[0].strip():
        raise RecordError(where, "bad conversation", f"field '{name}' has text before its first turn")
    roles = {"Human": "user", "Assistant": "assistant"}
    return [{"role": roles[r], "content": c.strip()} for r, c in zip(parts[1::2], parts[2::2], strict=True)]


# ----------------------------------------------------------------------------------------- formats
Converter = Callable[[dict, str, DataOptions, Notes], PreferencePair]


def _trl(r: dict, where: str, opts: DataOptions, notes: Notes) -> PreferencePair:
    chosen_v, rejected_v = get(r, "chosen", where), get(r, "rejected", where)
    if "prompt" in r:
        prompt = messages(r["prompt"], where, "prompt")
        chosen = _response(chosen_v, where, "chosen")
        rejected = _response(rejected_v, where, "rejected")
    elif isinstance(chosen_v, list) and isinstance(rejected_v, list):  # implicit prompt: shared history
        a, b = messages(chosen_v, where, "chosen"), messages(rejected_v, where, "rejected")
        prompt, chosen, rejected = split_conversations(a, b, where, notes)
    else:
        raise RecordError(where, "missing field", "missing field 'prompt' (or give chosen/rejected as message lists)")
    margin = r.get("margin")
    if margin is not None and (isinstance(margin, bool) or not isinstance(margin, (int, float))):
        raise RecordError(where, "not a number", "field 'margin' must be a number")
    meta = {k: r[k] for k in ("subset", "skill", "group") if isinstance(r.get(k), str)}
    source = r["source"] if isinstance(r.get("source"), str) else ""  # kept by `hafrm data convert`
    margin = None if margin is None else float(margin)
    return _pair(prompt, chosen, rejected, where, margin=margin, source=source, meta=meta)


def _response(value: Any, where: str, name: str) -> str:
    if isinstance(value, list):  # conversational: the last message is the response
        msgs = messages(value, where, name)
        if msgs[-1]["role"] != "assistant":
            raise RecordError(where, "bad conversation", f"the last message of '{name}' is not the assistant's")
        return msgs[-1]["content"]
    if not isinstance(value, str):
        raise RecordError(where, "not a string", f"field '{name}' must be a string, got {type(value).__name__}")
    return value


def _hh(r: dict, where: str, opts: DataOptions, notes: Notes) -> PreferencePair:
    a = hh_turns(text(r, "chosen", where), where, "chosen")
    b = hh_turns(text(r, "rejected", where), where, "rejected")
    prompt, chosen, rejected = split_conversations(a, b, where, notes)
    return _pair(prompt, chosen, rejected, where)


def _pku_native(r: dict, where: str, opts: DataOptions, notes: Notes) -> PreferencePair:
    prompt = messages(text(r, "prompt", where), where, "prompt")
    responses = [text(r, "response_0", where), text(r, "response_1", where)]
    if opts.pku_safety_filter:
        safe = [get(r, f"is_response_{i}_safe", where) for i in (0, 1)]
        if not all(isinstance(s, bool) for s in safe):
            raise RecordError(where, "bad label", "fields 'is_response_0_safe', 'is_response_1_safe' must be booleans")
        if safe[0] == safe[1]:
            raise Drop("both responses safe or both unsafe (safety filter)")
    best = label(r, f"{opts.pku_label}_response_id", where, (0, 1))
    names = ("response_0", "response_1")
    return _pair(prompt, responses[best], responses[1 - best], where, fields=(names[best], names[1 - best]))


def _pku_pair(r: dict, where: str, opts: DataOptions, notes: Notes) -> PreferencePair:
    prompt = messages(text(r, "prompt", where), where, "prompt")
    response = get(r, "response", where)
    if not (isinstance(response, list) and len(response) == 2 and all(isinstance(x, str) for x in response)):
        raise RecordError(where, "not a string", "field 'response' must be a list of two strings [preferred, other]")
    return _pair(prompt, response[0], response[1], where, fields=("response.0", "response.1"))


_ARENA_WINNERS = ("model_a", "model_b", "tie", "tie (bothbad)")


def _arena(r: dict, where: str, opts: DataOptions, notes: Notes) -> PreferencePair:
    winner = label(r, "winner", where, _ARENA_WINNERS)
    a = messages(get(r, "conversation_a", where), where, "conversation_a")
    b = messages(get(r, "conversation_b", where), where, "conversation_b")
    if winner.startswith("tie"):
        raise Drop("tie")
    prompt, ra, rb = split_conversations(a, b, where, notes)
    if winner == "model_a":
        return _pair(prompt, ra, rb, where, fields=("conversation_a", "conversation_b"))
    return _pair(prompt, rb, ra, where, fields=("conversation_b", "conversation_a"))


def _instruction(r: dict, where: str, instruction: str = "instruction", extra: str = "input") -> list[dict[str, str]]:
    inp = r.get(extra, "")
    if inp is None:
        inp = ""
    if not isinstance(inp, str):
        raise RecordError(where, "not a string", f"field '{extra}' must be a string, got {type(inp).__name__}")
    body = text(r, instruction, where)
    return [{"role": "user", "content": f"{body}\n\n{inp}" if inp.strip() else body}]


def _two(r: dict, where: str, prompt, first: str, second: str, better: int, meta=None) -> PreferencePair:
    """The pair from two response fields, `better` (1 or 2) naming the preferred one."""
    one, two = text(r, first, where), text(r, second, where)
    if better == 1:
        return _pair(prompt, one, two, where, meta=meta, fields=(first, second))
    return _pair(prompt, two, one, where, meta=meta, fields=(second, first))


def _alpacafarm(r: dict, where: str, opts: DataOptions, notes: Notes) -> PreferencePair:
    prompt = _instruction(r, where)
    better = label(r, "preference", where, (1, 2))
    return _two(r, where, prompt, "output_1", "output_2", better)


def _pandalm(r: dict, where: str, opts: DataOptions, notes: Notes) -> PreferencePair:
    prompt = _instruction(r, where)
    votes = Counter(label(r, f"annotator{i}", where, (0, 1, 2)) for i in (1, 2, 3))
    top, n = votes.most_common(1)[0]
    if n < 2 or top == 0:
        raise Drop("tie (annotator majority)")
    return _two(r, where, prompt, "response1", "response2", top)


def _autoj(r: dict, where: str, opts: DataOptions, notes: Notes) -> PreferencePair:
    prompt = messages(text(r, "prompt", where), where, "prompt")
    lab = label(r, "label", where, (0, 1, 2))
    if lab == 2:
        raise Drop("tie")
    meta = {"subset": r["scenario"]} if isinstance(r.get("scenario"), str) else {}
    return _two(r, where, prompt, "response 1", "response 2", lab + 1, meta=meta)


def _llmbar(r: dict, where: str, opts: DataOptions, notes: Notes) -> PreferencePair:
    prompt = messages(text(r, "input", where), where, "input")
    better = label(r, "label", where, (1, 2))
    return _two(r, where, prompt, "output_1", "output_2", better)


@dataclass(frozen=True)
class Format:
    name: str
    fields: frozenset[str]  # all present in a record of this format (detection)
    convert: Converter
    help: str


def _format(name: str, fields: str, convert: Converter, help: str) -> Format:
    return Format(name, frozenset(f.strip() for f in fields.split(",")), convert, help)


# Most specific first: detection takes the first format whose fields are all in the record.
FORMATS: dict[str, Format] = {
    f.name: f
    for f in (
        _format("pku", "prompt, response_0, response_1", _pku_native, "PKU-SafeRLHF / BeaverTails native"),
        _format("pku-pair", "prompt, response", _pku_pair, '{"prompt", "response": [preferred, other]}'),
        _format("arena", "conversation_a, conversation_b, winner", _arena, "Chatbot Arena conversations"),
        _format("alpacafarm", "instruction, output_1, output_2, preference", _alpacafarm, "AlpacaFarm human prefs"),
        _format("pandalm", "instruction, response1, response2, annotator1", _pandalm, "PandaLM (3 annotators)"),
        _format("autoj", "prompt, response 1, response 2, label", _autoj, "Auto-J pairwise (2 = tie)"),
        _format("llmbar", "input, output_1, output_2, label", _llmbar, "LLMBar-style (label 1 or 2)"),
        _format("rewardbench", "prompt, chosen, rejected, subset", _trl, "RewardBench (subset kept)"),
        _format("trl", "prompt, chosen, rejected", _trl, "TRL standard or conversational"),
        _format("hh", "chosen, rejected", _hh, "Anthropic HH-RLHF transcripts (or TRL implicit prompt)"),
    )
}


def _hh_or_implicit(record: dict) -> str:
    return "trl" if isinstance(record.get("chosen"), list) else "hh"


def detect(record: Any) -> str | None:
    """The first format whose fields are all in `record`, or None."""
    if not isinstance(record, dict):
        return None
    for f in FORMATS.values():
        if f.fields <= record.keys():
            return _hh_or_implicit(record) if f.name == "hh" else f.name
    return None


def unknown_format(record: Any, where: str) -> DataError:
    fields = ", ".join(sorted(map(str, record))) if isinstance(record, dict) else type(record).__name__
    return DataError(
        f"{where}: unknown format (fields: {fields or 'none'}); name one with --format "
        f"({', '.join(FORMATS)}) or map fields with --map prompt=... --map chosen=... --map rejected=..."
    )


# ------------------------------------------------------------------------------------------ mapping
MAP_TARGETS = ("prompt", "chosen", "rejected", "margin", "subset")


def parse_mapping(items: Sequence[str]) -> dict[str, str]:
    """['prompt=question', 'chosen=answers.0'] -> {'prompt': 'question', 'chosen': 'answers.0'}."""
    mapping = {}
    for item in items:
        target, sep, path = item.partition("=")
        target, path = target.strip(), path.strip()
        if not sep or not path or target not in MAP_TARGETS:
            raise DataError(f"--map {item!r}: expected TARGET=FIELD with TARGET one of {', '.join(MAP_TARGETS)}")
        mapping[target] = path
    for needed in ("chosen", "rejected"):
        if mapping and needed not in mapping:
            raise DataError(f"--map: no mapping for '{needed}' (given: {', '.join(mapping)})")
    return mapping


def lookup(record: Any, path: str, where: str, target: str) -> Any:
    """Follow a dotted path ('answers.0', 'meta.question') into nested objects and lists."""
    value = record
    for part in path.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.lstrip("-").isdigit() and -len(value) <= int(part) < len(value):
            value = value[int(part)]
        else:
            raise RecordError(where, "missing field", f"missing field '{path}' (mapped to {target})")
    return value


def apply_mapping(record: Any, mapping: dict[str, str], where: str) -> dict:
    if not isinstance(record, dict):
        raise RecordError(where, "not an object", f"expected a JSON object, got {type(record).__name__}")
    return {target: lookup(record, path, where, target) for target, path in mapping.items()}


def convert(record: Any, where: str, fmt: str, opts: DataOptions, notes: Notes) -> PreferencePair:
    """One record to a pair, or `Drop` / `RecordError`."""
    if opts.mapping:
        record = apply_mapping(record, opts.mapping, where)
    if not isinstance(record, dict):
        raise RecordError(where, "not an object", f"expected a JSON object, got {type(record).__name__}")
    if fmt == "hh" and isinstance(record.get("chosen"), list):
        fmt = "trl"
    return FORMATS[fmt].convert(record, where, opts, notes)
