"""`hafrm data inspect` and `hafrm data convert`: look at a source before training on it."""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hafrm.data.formats import DataOptions
from hafrm.data.io import LoadReport, load_source
from hafrm.data.tokenize import PairTokenizer
from hafrm.data.types import PreferencePair
from hafrm.fileio import write_jsonl_atomic


def pair_record(pair: PreferencePair) -> dict[str, Any]:
    """The normalised form `hafrm data convert` writes: TRL's, with the prompt as messages."""
    record: dict[str, Any] = {"prompt": pair.prompt, "chosen": pair.chosen, "rejected": pair.rejected}
    if pair.margin is not None:
        record["margin"] = pair.margin
    record.update({k: v for k, v in pair.meta.items() if k in ("subset", "skill", "group")})
    record["source"] = pair.source
    return record


def _percentiles(values: Sequence[int]) -> dict[str, int]:
    if not values:
        return {}
    ordered = sorted(values)
    at = {"p50": 0.5, "p90": 0.9, "p99": 0.99}
    out = {name: ordered[min(len(ordered) - 1, int(q * len(ordered)))] for name, q in at.items()}
    out["max"] = ordered[-1]
    return out


def inspect_source(
    spec: str, options: DataOptions, tokenizer: Any = None, max_length: int = 512, max_prompt_length: int = 256
) -> dict[str, Any]:
    """Everything `hafrm data inspect` prints for one source, as a dict (bad records are counted)."""
    opts = dataclasses.replace(options, on_error="skip")
    pairs, report = load_source(spec, opts)
    keys = [(p.prompt_text(), p.chosen, p.rejected) for p in pairs]
    info: dict[str, Any] = report.to_dict()
    info["pairs"] = report.kept + sum(report.skipped.values())  # valid or not, before any drop for bad input
    info["prompts"] = len({k[0] for k in keys})
    info["multi_turn_prompts"] = sum(sum(m["role"] == "user" for m in p.prompt) > 1 for p in pairs)
    info["duplicate_pairs"] = len(keys) - len(set(keys))
    info["subsets"] = dict(Counter(str(p.meta["subset"]) for p in pairs if "subset" in p.meta))
    if tokenizer is not None and pairs:
        enc = PairTokenizer(tokenizer, max_length, max_prompt_length)
        lengths = {"prompt": [], "chosen": [], "rejected": []}
        for p in pairs:
            c_ids, c_start = enc.encode(p.prompt, p.chosen)
            r_ids, _ = enc.encode(p.prompt, p.rejected)
            lengths["prompt"].append(c_start)
            lengths["chosen"].append(len(c_ids))
            lengths["rejected"].append(len(r_ids))
        info["tokens"] = {name: _percentiles(v) for name, v in lengths.items()}
        res = enc.tokenize(pairs)
        info["tokenisation"] = {
            "max_length": max_length,
            "max_prompt_length": max_prompt_length,
            "kept": len(res.pairs),
            "dropped": {why: n for (_, why), n in res.dropped.items()},
            "truncated": {what: n for (_, what), n in res.truncated.items()},
        }
    return info


def convert_source(spec: str, options: DataOptions, out: Path) -> LoadReport:
    """Write the pairs of `spec` as normalised JSONL (gzipped if `out` ends in .gz)."""
    pairs, report = load_source(spec, options)
    write_jsonl_atomic(out, (pair_record(pair) for pair in pairs))
    return report
