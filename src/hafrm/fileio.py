"""Writing files so that a killed process never leaves a half-written one under the final name; and
the NAME=PATH arguments of the commands that compare several models."""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hafrm.errors import ConfigError


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside `path` to write to; renamed onto `path` when the block succeeds,
    removed when it fails. A rename within one folder is atomic, so readers see the old file or
    the new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: str | os.PathLike, value: Any) -> None:
    """`value` as indented JSON with sorted keys (the form of every JSON report hafrm writes)."""
    write_text_atomic(path, json.dumps(value, indent=2, sort_keys=True) + "\n")


def write_jsonl_atomic(path: str | os.PathLike, records: Iterable[dict[str, Any]]) -> None:
    """One JSON object a line, UTF-8 as is; gzipped when `path` ends in .gz."""
    opener = gzip.open if Path(path).suffix == ".gz" else open
    with atomic_path(path) as tmp, opener(tmp, "wt", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


def named_paths(items: Sequence[str], what: str, default_name: Callable[[str], str]) -> dict[str, str]:
    """NAME -> PATH of arguments given as PATH or NAME=PATH (a bare PATH is named `default_name(PATH)`);
    two arguments with one name are refused, naming both, rather than one silently replacing the other."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, path = item.partition("=")
        name, path = (name.strip(), path.strip()) if sep else (default_name(item.strip()), item.strip())
        if not name or not path:
            raise ConfigError(f"{what} {item!r}: expected PATH or NAME=PATH")
        if name in out:
            raise ConfigError(f"{what} {item!r}: the name {name!r} is taken by {out[name]}; name each NAME=PATH")
        out[name] = path
    return out
