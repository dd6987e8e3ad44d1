"""Read preference data from files or the Hub, in any known format; count every record's fate.

`load_source(spec, options)` returns the pairs and a `LoadReport` in which every record read is
accounted for: kept, dropped for an expected reason (a tie, a filter, the per-source cap), or
skipped as bad input (only with `on_error="skip"`; by default bad input raises a `DataError`
naming the file, line and field).
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import hashlib
import io
import itertools
import json
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hafrm.data.formats import FORMATS, DataOptions, Drop, Notes, RecordError, convert, detect, unknown_format
from hafrm.data.types import PreferencePair
from hafrm.errors import DataError

SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+(:[\w.\[\]%:-]+)?$")


@dataclass(kw_only=True)
class LoadReport:
    """What happened to every record of one source."""

    source: str
    path: str
    format: str = ""
    records: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)  # expected drops: reason -> count
    skipped: Counter = field(default_factory=Counter)  # bad records (on_error=skip): kind -> count
    first_error: dict[str, str] = field(default_factory=dict)  # kind -> the first message of that kind
    notes: Counter = field(default_factory=Counter)  # kept, but worth knowing: note -> count
    capped: int = 0  # valid pairs left out by the per-source cap

    @property
    def accounted(self) -> int:
        return self.kept + sum(self.dropped.values()) + sum(self.skipped.values()) + self.capped

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "path": self.path,
            "format": self.format,
            "records": self.records,
            "kept": self.kept,
            "dropped": dict(self.dropped),
            "skipped": dict(self.skipped),
            "first_error": dict(self.first_error),
            "notes": dict(self.notes),
            "capped": self.capped,
        }


# ------------------------------------------------------------------------------------------- files
def _open_text(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else path.open(encoding="utf-8")


def _kind(path: Path) -> str:
    name = path.name[:-3] if path.name.endswith(".gz") else path.name
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return suffix
    raise DataError(f"{path}: unknown file type; expected one of {', '.join(SUFFIXES)} (optionally .gz)")


def iter_records(path: str | Path) -> Iterator[tuple[str, Any]]:
    """('file:line' or 'file:#index', record) for .jsonl/.json/.parquet/.csv, gzipped or not.

    A line of invalid JSON yields a `RecordError` in place of the record, so the caller decides
    whether it stops the load or is counted and skipped; a file that cannot be read at all raises.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    reader = _READERS[_kind(path)]
    try:
        yield from reader(path)
    except (OSError, UnicodeDecodeError, EOFError, csv.Error) as e:
        raise DataError(f"{path}: cannot read: {e}") from None


def _jsonl(path: Path) -> Iterator[tuple[str, Any]]:
    with _open_text(path) as f:
        for lineno, line in enumerate(f, start=1):
            if line.strip():
                yield f"{path}:{lineno}", _json_line(line, f"{path}:{lineno}")


def _json(path: Path) -> Iterator[tuple[str, Any]]:
    with _open_text(path) as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from None
    if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
        data = next(iter(data.values()))  # {"data": [...]}
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of records (or JSON lines in a .jsonl file)")
    for i, record in enumerate(data):
        yield f"{path}:#{i}", record


def _csv(path: Path) -> Iterator[tuple[str, Any]]:
    with _open_text(path) as f:
        reader = csv.DictReader(f)
        for row in reader:
            yield f"{path}:{reader.line_num}", _csv_row(row)


def _json_line(line: str, where: str) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError as e:
        return RecordError(where, "invalid JSON", f"invalid JSON: {e.msg} (column {e.colno})")
    except RecursionError:
        return RecordError(where, "invalid JSON", "invalid JSON: nested too deeply")


def _csv_row(row: dict) -> dict:
    """CSV cells are strings; a cell holding a JSON list or object (a conversation) is parsed."""
    out = {}
    for k, v in row.items():
        if k is None:  # more cells than header names
            out["__extra__"] = v
            continue
        if isinstance(v, str) and v[:1] in "[{":
            try:
                v = json.loads(v)
            except json.JSONDecodeError:
                pass
        out[k] = v
    return out


def _parquet(path: Path) -> Iterator[tuple[str, Any]]:
    import pyarrow.parquet as pq

    data = path.read_bytes()
    if path.suffix == ".gz":
        data = gzip.decompress(data)
    table = pq.read_table(io.BytesIO(data))
    for i, record in enumerate(table.to_pylist()):
        yield f"{path}:#{i}", record


_READERS = {".jsonl": _jsonl, ".json": _json, ".csv": _csv, ".parquet": _parquet}


def _hub_records(spec: str) -> Iterator[tuple[str, Any]]:
    """Records of a Hub dataset 'org/name' or 'org/name:split' (needs network or the HF cache)."""
    import datasets

    name, _, split = spec.partition(":")
    try:
        ds = datasets.load_dataset(name, split=split or "train")
    except Exception as e:  # datasets raises many types: offline, missing, gated, bad split
        raise DataError(f"{spec}: cannot load Hub dataset: {type(e).__name__}: {e}") from None
    for i, record in enumerate(ds):
        yield f"{spec}:#{i}", record


def source_name(spec: str) -> str:
    """The tag a source's pairs carry: the file name without suffixes, or the Hub id."""
    return spec if _is_hub_id(spec) else Path(spec).name.split(".")[0]


def _is_hub_id(spec: str) -> bool:
    """'org/name' or 'org/name:split' that is not a local path and has no data-file suffix."""
    name = spec[:-3] if spec.endswith(".gz") else spec
    return bool(_HUB_ID.match(spec)) and not Path(spec).exists() and not name.endswith(SUFFIXES)


def _records(spec: str) -> Iterator[tuple[str, Any]]:
    return _hub_records(spec) if _is_hub_id(spec) else iter_records(spec)


# ---------------------------------------------------------------------------------------- loading
def load_source(spec: str, options: DataOptions | None = None) -> tuple[list[PreferencePair], LoadReport]:
    """All pairs of one file or Hub dataset, and the report that accounts for every record."""
    opts = options or DataOptions()
    if opts.on_error not in ("raise", "skip"):
        raise DataError(f"on_error must be 'raise' or 'skip', got {opts.on_error!r}")
    if opts.format is not None and opts.format not in FORMATS:
        raise DataError(f"unknown format {opts.format!r}; accepted: {', '.join(FORMATS)}")
    fmt, records = _detect_format(spec, _records(spec), opts)
    report = LoadReport(source=source_name(spec), path=spec, format=fmt)
    notes, pairs = Notes(), []
    for where, record in records:
        report.records += 1
        try:
            if isinstance(record, RecordError):
                raise record
            pair = convert(record, where, "trl" if opts.mapping else fmt, opts, notes)
        except Drop as d:
            report.dropped[d.reason] += 1
            continue
        except RecordError as e:
            if opts.on_error == "raise":
                raise DataError(f"{e} (use --on-error skip to skip and count bad records)") from None
            report.skipped[e.kind] += 1
            report.first_error.setdefault(e.kind, str(e))
            continue
        pairs.append(dataclasses.replace(pair, source=pair.source or report.source, origin=where))
    report.notes.update(notes.counts)
    if opts.max_pairs is not None and len(pairs) > opts.max_pairs:
        report.capped = len(pairs) - opts.max_pairs
        pairs = cap(pairs, opts.max_pairs, opts.seed)
    report.kept = len(pairs)
    if report.accounted != report.records:  # a bug, never the user's input
        raise AssertionError(f"{spec}: {report.records} records read but {report.accounted} accounted for")
    return pairs, report


DETECT_WINDOW = 100  # records looked at to detect a source's format


def _detect_format(spec: str, records: Iterator, opts: DataOptions) -> tuple[str, Iterator]:
    """(format, all records again): the named one, or that of the first record with known fields."""
    if opts.mapping:
        return "mapped", records
    if opts.format:
        return opts.format, records
    seen: list[tuple[str, Any]] = []
    for where, record in records:
        seen.append((where, record))
        fmt = detect(record)
        if fmt:
            return fmt, itertools.chain(seen, records)
        if len(seen) == DETECT_WINDOW:
            break
    if not seen:
        raise DataError(f"{spec}: no preference pairs (the source has no records)")
    first_object = next(((w, r) for w, r in seen if isinstance(r, dict)), None)
    if first_object is None:
        first_where, first = seen[0]
        if isinstance(first, RecordError):
            raise DataError(f"{first} (and no record in the first {len(seen)} is a JSON object)")
        raise RecordError(first_where, "not an object", f"expected a JSON object, got {type(first).__name__}")
    raise unknown_format(first_object[1], first_object[0])


def cap(pairs: Sequence[PreferencePair], n: int, seed: int) -> list[PreferencePair]:
    """A seeded sample of n pairs (whole prompts are not kept together: the split comes later), order kept."""

    def key(i: int) -> bytes:
        return hashlib.sha256(f"{seed}:{i}:{pairs[i].prompt_text()}".encode()).digest()

    chosen = sorted(sorted(range(len(pairs)), key=key)[:n])
    return [pairs[i] for i in chosen]


def load_pairs(spec: str | Path, options: DataOptions | None = None) -> list[PreferencePair]:
    """The pairs of one source (raises on bad input unless options say skip)."""
    pairs, report = load_source(str(spec), options)
    if not pairs:
        raise DataError(f"{spec}: no preference pairs kept ({summary_line(report)})")
    return pairs


def summary_line(report: LoadReport) -> str:
    parts = [f"{report.records} records", f"{report.kept} pairs kept"]
    parts += [f"{n} dropped: {reason}" for reason, n in sorted(report.dropped.items())]
    parts += [f"{n} skipped: {kind}" for kind, n in sorted(report.skipped.items())]
    if report.capped:
        parts.append(f"{report.capped} over the per-source cap")
    parts += [f"{n} {note}" for note, n in sorted(report.notes.items())]
    return f"{report.source} [{report.format or '?'}]: " + ", ".join(parts)


def split_by_prompt(
    pairs: Sequence[PreferencePair], test_fraction: float, seed: int
) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """Split by a stable hash of (seed, each pair's group or else prompt), so no group or prompt is
    on both sides.

    The fraction holds over groups, not pairs: the built-in facts have only 33 groups (clusters of
    three facts), so their share of test pairs varies around the fraction from seed to seed.
    """
    if not 0.0 <= test_fraction <= 1.0:
        raise ValueError(f"test_fraction must be in [0, 1], got {test_fraction}")
    train, test = [], []
    for p in pairs:
        key = str(p.meta.get("group") or p.prompt_text())
        digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
        (test if int.from_bytes(digest[:8], "big") / 2**64 < test_fraction else train).append(p)
    return train, test
