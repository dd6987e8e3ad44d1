import gzip
import json

import pytest

from hafrm.errors import ConfigError
from hafrm.fileio import atomic_path, named_paths, write_json_atomic, write_jsonl_atomic, write_text_atomic


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "metrics.json"
    write_text_atomic(path, "old\n")
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert path.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_json_is_indented_with_sorted_keys_and_a_final_newline(tmp_path):
    path = tmp_path / "sub" / "m.json"  # the folder is made
    write_json_atomic(path, {"b": 1, "a": [1, 2]})
    assert path.read_text() == '{\n  "a": [\n    1,\n    2\n  ],\n  "b": 1\n}\n'


@pytest.mark.parametrize("name", ["pairs.jsonl", "pairs.jsonl.gz"])
def test_jsonl_round_trips_unicode_plain_or_gzipped(tmp_path, name):
    records = [{"prompt": "naïve ✓"}, {"prompt": "2"}]
    path = tmp_path / name
    write_jsonl_atomic(path, iter(records))
    opener = gzip.open if name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        lines = f.read().splitlines()
    assert [json.loads(line) for line in lines] == records
    assert "naïve ✓" in lines[0]  # written as is, not \u-escaped


def test_named_paths_name_bare_paths_and_refuse_a_name_twice():
    named = named_paths(["runs/a", "haf = runs/b", "x=y=z"], "model", lambda p: p.rsplit("/", 1)[-1])
    assert named == {"a": "runs/a", "haf": "runs/b", "x": "y=z"}  # the name ends at the first '='
    with pytest.raises(ConfigError, match=r"model 'runs/b/a': the name 'a' is taken by runs/a"):
        named_paths(["runs/a", "runs/b/a"], "model", lambda p: p.rsplit("/", 1)[-1])
    with pytest.raises(ConfigError, match=r"model '=runs/a': expected PATH or NAME=PATH"):
        named_paths(["=runs/a"], "model", str)
