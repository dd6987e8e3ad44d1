"""What a data item means: 'builtin' (the built-in task), 'builtin:SKILL,...' (those skills of
it), a file, or a Hub dataset 'org/name[:split]'. Every command that reads `--data` resolves its
items here (train, eval, experiment, Best-of-N, bench).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hafrm.data import builtin
from hafrm.data.formats import DataOptions
from hafrm.data.io import LoadReport, load_source, split_by_prompt, summary_line
from hafrm.data.types import PreferencePair
from hafrm.errors import ConfigError, DataError

if TYPE_CHECKING:  # a run's config says how to read its sources; config itself imports data's formats
    from hafrm.config import HafConfig

# An empty system turn: without one, the chat template adds its own (18 tokens for SmolLM2).
BUILTIN_SYSTEM_PROMPT = ""


@dataclass(frozen=True, kw_only=True)
class Source:
    """The pairs of one data item."""

    item: str  # as given: 'builtin:facts', 'data/hh.jsonl', 'org/name:test'
    pairs: list[PreferencePair]
    report: LoadReport | None  # what happened to every record read; None for the built-in task (generated)


def builtin_skills(item: str) -> tuple[str, ...] | None:
    """The skills a data item names: 'builtin' = all, 'builtin:arithmetic,facts' = those; None if
    the item is not the built-in task."""
    name, _, rest = item.partition(":")
    if name != "builtin":
        return None
    skills = tuple(s.strip() for s in rest.split(",") if s.strip()) if rest else builtin.SKILLS
    unknown = [s for s in skills if s not in builtin.SKILLS]
    if unknown or not skills or len(set(skills)) != len(skills):
        raise DataError(f"{item}: name distinct built-in skills among {', '.join(builtin.SKILLS)} (got {rest!r})")
    return skills


def builtin_pairs(cfg: HafConfig, skills: tuple[str, ...] | None = None, n: int | None = None) -> list[PreferencePair]:
    """`n` pairs of the built-in task's `skills` (default all), with its short system message.
    By default `n` is the skills' share of `cfg.builtin_pairs`, the size of the whole task. (The
    pairs are generated for those skills alone: 'builtin:facts' holds as many facts pairs as
    'builtin' does, not the same ones.)"""
    skills = skills or builtin.SKILLS
    if n is None:
        n = cfg.builtin_pairs * len(skills) // len(builtin.SKILLS)
    system = {"role": "system", "content": BUILTIN_SYSTEM_PROMPT}
    most = builtin.max_pairs(skills)
    if n > most:
        whole = f"; {builtin.max_pairs()} for the whole task" if len(skills) < len(builtin.SKILLS) else ""
        raise ConfigError(
            f"builtin_pairs: {n} pairs of {'+'.join(skills)} asked for (builtin_pairs {cfg.builtin_pairs}), but "
            f"the built-in templates make at most {most} unique ones{whole}"
        )
    pairs = builtin.generate_pairs(n, seed=cfg.seed, skills=skills)
    return [dataclasses.replace(p, prompt=[system, *p.prompt]) for p in pairs]


def read_source(
    item: str,
    cfg: HafConfig,
    options: DataOptions | None = None,
    n: int | None = None,
    require_pairs: bool = True,
) -> Source:
    """The pairs of one data item: the built-in task's from `cfg` (its size, or `n` pairs, and
    seed), a file's or Hub dataset's read with `options` (default `cfg.data_options()`).
    `require_pairs`: a file or dataset of which no pair is kept is a DataError."""
    skills = builtin_skills(item)
    if skills is not None:
        return Source(item=item, pairs=builtin_pairs(cfg, skills, n), report=None)
    pairs, report = load_source(item, cfg.data_options() if options is None else options)
    if require_pairs and not pairs:
        raise DataError(f"{item}: no preference pairs kept ({summary_line(report)})")
    return Source(item=item, pairs=pairs, report=report)


def read_sources(
    items: Sequence[str],
    cfg: HafConfig,
    options: DataOptions | None = None,
    n: int | None = None,
    require_pairs: bool = True,
) -> list[Source]:
    """`read_source` of every item, in order."""
    return [read_source(item, cfg, options, n, require_pairs) for item in items]


def read_held_out(item: str, train_cfg: HafConfig, options: DataOptions | None = None) -> Source:
    """A data item as an evaluation of a trained model reads it: for the built-in task, the pairs
    of the skills named on the held-out split of the run configured by `train_cfg` (the pairs it
    was evaluated on in training); a file or dataset whole, read with `options` (default: the
    readers' defaults, not the training run's)."""
    skills = builtin_skills(item)
    if skills is None:
        return read_source(item, train_cfg, DataOptions() if options is None else options)
    whole = any(builtin_skills(d) == builtin.SKILLS for d in train_cfg.data)  # trained on all skills
    pairs = builtin_pairs(train_cfg, None if whole else skills)
    held_out = split_by_prompt(pairs, train_cfg.eval_fraction, train_cfg.seed)[1]
    return Source(item=item, pairs=[p for p in held_out if p.meta["skill"] in skills], report=None)
