"""Shortcut baselines: near chance on the built-in task, and able to find a planted cue."""

from __future__ import annotations

import dataclasses

import pytest

from hafrm.data.builtin import SKILLS, generate_pairs
from hafrm.data.io import split_by_prompt
from hafrm.data.types import PreferencePair
from hafrm.evaluation.baselines import (
    ShortcutReport,
    bag_of_words_accuracy,
    length_baseline_accuracy,
    shortcut_report,
)


def _pair(chosen: str, rejected: str) -> PreferencePair:
    return PreferencePair(prompt=[{"role": "user", "content": "?"}], chosen=chosen, rejected=rejected)


@pytest.fixture(scope="module")
def split():
    return split_by_prompt(generate_pairs(2000, seed=0), test_fraction=0.2, seed=0)


def test_length_baseline_counts_a_tie_as_half():
    pairs = [_pair("long one", "short"), _pair("s", "longer"), _pair("same", "size")]
    assert length_baseline_accuracy(pairs) == pytest.approx((1 + 0 + 0.5) / 3)


def test_shortcut_report_reports_both_length_directions(split):
    report = shortcut_report(*split)
    assert isinstance(report, ShortcutReport)
    assert report.length_shorter == pytest.approx(1 - report.length_longer)


@pytest.mark.parametrize("skill", [None, *SKILLS])
def test_no_shortcut_beats_0_6_on_the_builtin_task(split, skill):
    train, test = ([p for p in part if skill in (None, p.meta["skill"])] for part in split)
    report = shortcut_report(train, test)
    assert max(report.length_longer, report.length_shorter) <= 0.6, report
    assert report.bag_of_words <= 0.6, report


def _planted(pairs: list[PreferencePair], every: int) -> list[PreferencePair]:
    """Every `every`-th pair's chosen response gets the word "great" appended."""
    return [dataclasses.replace(p, chosen=p.chosen + " great") if i % every == 0 else p for i, p in enumerate(pairs)]


def test_bag_of_words_finds_a_planted_word(split):
    train, test = split
    assert bag_of_words_accuracy(_planted(train, 1), _planted(test, 1)) > 0.95
    # Planted in half the pairs it lifts exactly those: about 0.5 + 0.5 / 2.
    assert bag_of_words_accuracy(_planted(train, 2), _planted(test, 2)) > 0.7


def test_bag_of_words_is_case_sensitive(split):
    train, test = split
    shout = [dataclasses.replace(p, chosen=p.chosen + " OK", rejected=p.rejected + " ok") for p in train]
    test_shout = [dataclasses.replace(p, chosen=p.chosen + " OK", rejected=p.rejected + " ok") for p in test]
    assert bag_of_words_accuracy(shout, test_shout) > 0.95


def test_length_baseline_finds_a_planted_length_cue(split):
    padded = [dataclasses.replace(p, chosen=p.chosen + " indeed, without any doubt") for p in split[1]]
    assert length_baseline_accuracy(padded) > 0.95


def test_baselines_need_pairs():
    with pytest.raises(ValueError):
        length_baseline_accuracy([])
    with pytest.raises(ValueError):
        bag_of_words_accuracy([], [_pair("a", "b")])
