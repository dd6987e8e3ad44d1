"""Read preference pairs from TRL-style JSONL/JSON files; errors name file, line and field."""

from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from hafrm.data.types import PreferencePair
from hafrm.errors import DataError


def _open_text(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else path.open(encoding="utf-8")


def iter_records(path: str | Path) -> Iterator[tuple[int, Any]]:
    """(line number or record index, parsed record) for .jsonl / .json, gzipped or not."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    name = path.name[:-3] if path.name.endswith(".gz") else path.name
    with _open_text(path) as f:
        if name.endswith(".json"):
            try:
                data = json.load(f)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from None
            if not isinstance(data, list):
                raise DataError(f"{path}: expected a JSON list of records")
            yield from enumerate(data)
            return
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: invalid JSON: {e.msg}") from None


def _text(value: Any, where: str, name: str) -> str:
    if isinstance(value, list):  # conversational: the last message is the response
        if not value or not isinstance(value[-1], dict) or "content" not in value[-1]:
            raise DataError(f"{where}: field '{name}' must be a string or a list of messages")
        value = value[-1]["content"]
    if not isinstance(value, str):
        raise DataError(f"{where}: field '{name}' must be a string, got {type(value).__name__}")
    if not value.strip():
        raise DataError(f"{where}: field '{name}' is empty")
    return value


def prompt_messages(value: Any, where: str) -> list[dict[str, str]]:
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    ok = (
        isinstance(value, list)
        and value
        and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value
        )
    )
    if not ok:
        raise DataError(f"{where}: field 'prompt' must be a string or a list of {{role, content}} messages")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def record_to_pair(record: Any, where: str, source: str) -> PreferencePair:
    """One TRL-format record (`prompt`, `chosen`, `rejected`, optional `margin`) to a pair."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    for name in ("chosen", "rejected"):
        if name not in record:
            raise DataError(f"{where}: missing field '{name}' (expected prompt, chosen, rejected)")
    if "prompt" in record:
        prompt = prompt_messages(record["prompt"], where)
    elif isinstance(record["chosen"], list) and len(record["chosen"]) > 1:
        prompt = prompt_messages(record["chosen"][:-1], where)  # implicit prompt: the shared history
    else:
        raise DataError(f"{where}: missing field 'prompt'")
    chosen = _text(record["chosen"], where, "chosen")
    rejected = _text(record["rejected"], where, "rejected")
    if chosen == rejected:
        raise DataError(f"{where}: fields 'chosen' and 'rejected' are identical")
    margin = record.get("margin")
    if margin is not None and not isinstance(margin, (int, float)):
        raise DataError(f"{where}: field 'margin' must be a number")
    meta = {k: record[k] for k in ("subset", "skill", "group") if isinstance(record.get(k), str)}
    return PreferencePair(prompt, chosen, rejected, None if margin is None else float(margin), source, meta)


def load_pairs(path: str | Path) -> list[PreferencePair]:
    path = Path(path)
    source = path.name.split(".")[0]
    pairs = [record_to_pair(rec, f"{path}:{i}", source) for i, rec in iter_records(path)]
    if not pairs:
        raise DataError(f"{path}: no preference pairs in the file")
    return pairs


def split_by_prompt(
    pairs: Sequence[PreferencePair], test_fraction: float, seed: int
) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """Split by a stable hash of each pair's group (or prompt), so no prompt is on both sides."""
    train, test = [], []
    for p in pairs:
        key = str(p.meta.get("group") or p.prompt_text())
        digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
        (test if int.from_bytes(digest[:8], "big") / 2**64 < test_fraction else train).append(p)
    return train, test
