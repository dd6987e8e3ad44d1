"""One meaning of a data item ('builtin', 'builtin:SKILL,...', a file, a Hub id) for every command."""

import ast
import json
from pathlib import Path

import pytest

import hafrm.data.sources
from hafrm.config import HafConfig
from hafrm.data.formats import DataOptions
from hafrm.data.io import load_source, split_by_prompt
from hafrm.data.sources import builtin_pairs, builtin_skills, read_held_out, read_source, read_sources
from hafrm.errors import DataError


def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def test_builtin_items_are_generated_with_the_empty_system_turn():
    cfg = HafConfig(builtin_pairs=60)
    whole = read_source("builtin", cfg)
    assert whole.report is None and whole.item == "builtin"
    assert whole.pairs == builtin_pairs(cfg) and len(whole.pairs) == 60
    assert all(p.prompt[0] == {"role": "system", "content": ""} for p in whole.pairs)
    facts = read_source("builtin:facts", cfg)
    assert {p.meta["skill"] for p in facts.pairs} == {"facts"} and len(facts.pairs) == 20
    assert len(read_source("builtin:facts", cfg, n=8).pairs) == 8  # an explicit count (experiment caps)
    with pytest.raises(DataError, match="distinct built-in skills"):
        builtin_skills("builtin:poetry")
    assert builtin_skills("data/builtin.jsonl") is None


def test_files_are_read_with_the_config_options_or_the_given_ones(tmp_path):
    path = _write(tmp_path / "d.jsonl", [{"prompt": f"Q{i}", "chosen": "yes", "rejected": "no"} for i in range(6)])
    cfg = HafConfig(max_pairs_per_source=4)
    capped = read_source(path, cfg)
    assert len(capped.pairs) == 4 and capped.report.capped == 2
    pairs, report = load_source(path, cfg.data_options())
    assert capped.pairs == pairs and capped.report.to_dict() == report.to_dict()
    assert len(read_source(path, cfg, DataOptions()).pairs) == 6
    both = read_sources([path, "builtin:arithmetic"], HafConfig(builtin_pairs=30))
    assert [s.item for s in both] == [path, "builtin:arithmetic"] and [len(s.pairs) for s in both] == [6, 10]


def test_a_source_with_no_pair_kept_is_an_error_unless_allowed(tmp_path):
    path = _write(tmp_path / "ties.jsonl", [{"prompt": "Q", "chosen": "same", "rejected": "same"}])
    skip = DataOptions(on_error="skip")
    with pytest.raises(DataError, match="no preference pairs kept"):
        read_source(path, HafConfig(), skip)
    empty = read_source(path, HafConfig(), skip, require_pairs=False)
    assert empty.pairs == [] and empty.report.records == 1


def test_held_out_is_the_split_training_evaluated_on():
    cfg = HafConfig(builtin_pairs=120, data=["builtin"])
    held_out = split_by_prompt(builtin_pairs(cfg), cfg.eval_fraction, cfg.seed)[1]
    assert read_held_out("builtin", cfg).pairs == held_out
    assert read_held_out("builtin:facts", cfg).pairs == [p for p in held_out if p.meta["skill"] == "facts"]
    # trained on one skill: its own split of that skill's pairs
    one = HafConfig(builtin_pairs=120, data=["builtin:facts"])
    facts = split_by_prompt(builtin_pairs(one, ("facts",)), one.eval_fraction, one.seed)[1]
    assert read_held_out("builtin:facts", one).pairs == facts


def test_sources_sits_below_training_evaluation_and_apps():
    tree = ast.parse(Path(hafrm.data.sources.__file__).read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not {m for m in imported if m.startswith(("hafrm.training", "hafrm.evaluation", "hafrm.apps"))}
