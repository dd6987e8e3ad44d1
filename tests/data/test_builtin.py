"""The built-in task: deterministic, unique, balanced, gold by construction, split by group."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from hafrm.data.builtin import SKILLS, generate_pairs, is_correct, max_pairs
from hafrm.data.io import split_by_prompt


@pytest.fixture(scope="module")
def pairs():
    return generate_pairs(2000, seed=0)


def test_same_seed_same_pairs_other_seed_other_pairs():
    assert generate_pairs(300, seed=3) == generate_pairs(300, seed=3)
    assert generate_pairs(300, seed=3) != generate_pairs(300, seed=4)


def test_records_are_short_single_user_turns_with_json_meta(pairs):
    for p in pairs:
        assert p.source == "builtin"
        assert p.prompt == [{"role": "user", "content": p.prompt[0]["content"]}]
        assert set(p.meta) == {"skill", "subset", "group", "spec"}
        json.dumps(p.meta)
        # ~4 characters a token: prompts <= ~27 tokens, responses <= ~17.
        assert len(p.prompt[0]["content"]) <= 110 and max(len(p.chosen), len(p.rejected)) <= 70


def test_prompts_are_unique(pairs):
    assert len({p.prompt[0]["content"] for p in pairs}) == len(pairs)


def test_skills_are_balanced_and_round_robin(pairs):
    assert Counter(p.meta["skill"] for p in pairs) == {"arithmetic": 667, "facts": 667, "format": 666}
    assert [p.meta["skill"] for p in pairs[:6]] == [*SKILLS, *SKILLS]
    two = generate_pairs(11, skills=["format", "facts"])
    assert [p.meta["skill"] for p in two] == ["format", "facts"] * 5 + ["format"]


def test_every_subtype_appears(pairs):
    assert {p.meta["subset"] for p in pairs} == {
        "arithmetic.add", "arithmetic.subtract", "arithmetic.multiply",
        *(f"facts.{r}" for r in ("capital", "capital_of", "continent", "currency", "language")),
        *(f"format.{s}" for s in ("all_caps", "lowercase", "case_except", "keyword", "word_count", "list_items")),
    }  # fmt: skip


@pytest.mark.parametrize("seed", [0, 1])
def test_chosen_passes_and_rejected_fails_the_verifier(seed):
    for p in generate_pairs(3000, seed=seed):
        assert is_correct(p.meta["spec"], p.chosen), p
        assert not is_correct(p.meta["spec"], p.rejected), p


def test_mirror_couples_cancel_every_response_only_cue():
    """In each group, length differences and word-count differences sum to zero.

    1440 pairs give every subtype an even share, so no couple is cut.
    """
    length: Counter[str] = Counter()
    words: dict[str, Counter[str]] = {}
    for p in generate_pairs(1440, seed=5):
        group = p.meta["group"]
        length[group] += (len(p.chosen) > len(p.rejected)) - (len(p.chosen) < len(p.rejected))
        diff = words.setdefault(group, Counter())
        diff.update(p.chosen.split())
        diff.subtract(p.rejected.split())
    assert not any(length.values())
    assert all(not any(diff.values()) for diff in words.values())


@pytest.mark.parametrize(("skill", "n"), [("arithmetic", 1100), ("facts", 3000), ("format", 3000)])
def test_each_skill_makes_enough_unique_pairs(skill, n):
    made = generate_pairs(n, skills=[skill])  # arithmetic is small numbers on purpose: ~1150 at most
    assert len({p.prompt[0]["content"] for p in made}) == n


def test_too_many_pairs_is_a_clear_error():
    with pytest.raises(ValueError, match="ask for fewer pairs"):
        generate_pairs(100_000, skills=["format"])


@pytest.mark.parametrize("skills", [None, ["arithmetic"], ["format"], ["arithmetic", "facts"]])
def test_max_pairs_is_the_exact_limit(skills):
    most = max_pairs(skills)
    assert len(generate_pairs(most, skills=skills)) == most
    with pytest.raises(ValueError, match="ask for fewer pairs"):
        generate_pairs(most + 1, skills=skills)


@pytest.mark.parametrize("skills", [["poetry"], ["facts", "facts"], []])
def test_bad_skills_name_the_accepted_ones(skills):
    with pytest.raises(ValueError, match="arithmetic, facts, format"):
        generate_pairs(10, skills=skills)


def test_split_keeps_groups_apart_near_the_fraction(pairs):
    train, test = split_by_prompt(pairs, test_fraction=0.2, seed=0)
    assert len(train) + len(test) == len(pairs)
    assert not {p.meta["group"] for p in train} & {p.meta["group"] for p in test}
    assert 0.15 <= len(test) / len(pairs) <= 0.3
    assert (train, test) == split_by_prompt(pairs, test_fraction=0.2, seed=0)
    assert test != split_by_prompt(pairs, test_fraction=0.2, seed=1)[1]


def test_split_fraction_edges():
    few = generate_pairs(30)
    assert split_by_prompt(few, test_fraction=0.0, seed=0) == (few, [])
    assert split_by_prompt(few, test_fraction=1.0, seed=0) == ([], few)
    with pytest.raises(ValueError, match="test_fraction"):
        split_by_prompt(few, test_fraction=1.5, seed=0)


def test_a_fact_and_its_reverse_question_share_a_group(pairs):
    groups = {p.meta["group"] for p in pairs if p.meta["subset"] in ("facts.capital", "facts.capital_of")}
    assert "capital:France/Germany/Italy" in groups
    assert all(g.startswith("capital:") for g in groups)


ARITHMETIC = {"kind": "arithmetic", "answer": 85}
PARIS = {"kind": "facts", "relation": "capital", "answer": "Paris", "aliases": []}
USA = {"kind": "facts", "relation": "capital_of", "answer": "United States", "aliases": ["USA"]}
BRAZIL = {"kind": "facts", "relation": "continent", "answer": "South America", "aliases": []}
EURO = {"kind": "facts", "relation": "currency", "answer": "euro", "aliases": []}


@pytest.mark.parametrize(
    ("spec", "response", "expected"),
    [
        (ARITHMETIC, "The answer is 85.", True),
        (ARITHMETIC, "85", True),
        (ARITHMETIC, "47 + 38 = 85", True),
        (ARITHMETIC, "85.0", True),
        (ARITHMETIC, "84", False),
        (ARITHMETIC, "It is 85, not 84.", False),  # the last number counts
        (ARITHMETIC, "eighty-five", False),
        ({"kind": "arithmetic", "answer": 1085}, "That makes 1,085.", True),
        ({"kind": "arithmetic", "answer": -9}, "38 - 47 = -9", True),
        ({"kind": "arithmetic", "answer": 9}, "47-38=9", True),
        (PARIS, "PARIS is the capital", True),
        (PARIS, "The capital of France is paris.", True),
        (PARIS, "Berlin.", False),
        (PARIS, "Paris or Berlin", False),
        (PARIS, "Parisian food", False),
        (PARIS, "I don't know.", False),
        ({**PARIS, "answer": "Washington"}, "Washington, D.C.", True),
        ({**PARIS, "answer": "Mexico City"}, "Mexico City is the capital of Mexico.", True),
        (USA, "the United States of America", True),
        (USA, "USA", True),
        (USA, "It is Canada.", False),
        ({**USA, "answer": "United Kingdom"}, "London is in England.", True),
        (BRAZIL, "It is in South America.", True),
        (BRAZIL, "It is in North America.", False),
        (BRAZIL, "America", False),
        (EURO, "They pay in euros.", True),
        (EURO, "The yen.", False),
        ({"kind": "all_caps"}, "THE SEA IS CALM.", True),
        ({"kind": "all_caps"}, "I AM 5 YEARS OLD", True),
        ({"kind": "all_caps"}, "THE SEA IS calm.", False),
        ({"kind": "all_caps"}, "123", False),
        ({"kind": "lowercase"}, "the sea is calm.", True),
        ({"kind": "lowercase"}, "The sea is calm.", False),
        ({"kind": "case_except", "case": "upper", "word": "calm"}, "THE SEA IS calm.", True),
        ({"kind": "case_except", "case": "upper", "word": "calm"}, "THE SEA IS CALM.", False),
        ({"kind": "case_except", "case": "upper", "word": "calm"}, "THE sea IS calm.", False),
        ({"kind": "case_except", "case": "lower", "word": "calm"}, "the sea is CALM.", True),
        ({"kind": "case_except", "case": "lower", "word": "calm"}, "the sea is calm.", False),
        ({"kind": "keyword", "word": "river"}, "We walked by the River.", True),
        ({"kind": "keyword", "word": "river"}, "We walked by the rivers.", False),
        ({"kind": "keyword", "word": "river"}, "A riverbank.", False),
        ({"kind": "word_count", "n": 3}, "one two three", True),
        ({"kind": "word_count", "n": 3}, "one - two three", True),
        ({"kind": "word_count", "n": 3}, "a well-known fact", True),
        ({"kind": "word_count", "n": 3}, "one two", False),
        ({"kind": "list_items", "k": 3}, "- a\n- b\n- c", True),
        ({"kind": "list_items", "k": 3}, "Here:\n1. a\n2) b\n* c", True),
        ({"kind": "list_items", "k": 3}, "- a\n- b", False),
        ({"kind": "list_items", "k": 3}, "a, b, c", False),
    ],
)
def test_verify_judges_free_responses(spec, response, expected):
    assert is_correct(spec, response) is expected


def test_verify_rejects_an_unknown_kind():
    with pytest.raises(ValueError, match="unknown spec kind 'haiku'"):
        is_correct({"kind": "haiku"}, "five seven five")


def test_a_skill_source_reads_its_share_of_the_task():
    from hafrm.config import HafConfig
    from hafrm.data.sources import builtin_pairs, builtin_skills

    cfg = HafConfig()  # the default task size must be one the templates can make, per skill too
    whole = builtin_pairs(cfg, builtin_skills("builtin"))
    arithmetic = builtin_pairs(cfg, builtin_skills("builtin:arithmetic"))
    assert len(whole) == cfg.builtin_pairs
    assert len(arithmetic) == cfg.builtin_pairs // len(SKILLS)
    assert {p.meta["skill"] for p in arithmetic} == {"arithmetic"}
    assert len(builtin_pairs(cfg, ("facts", "format"), n=40)) == 40  # an explicit count (experiment caps)
    assert all(p.prompt[0] == {"role": "system", "content": ""} for p in arithmetic)  # the empty system turn
