"""Reading TRL-format files: every bad record is named by file, line and field."""

import gzip
import json

import pytest

from hafrm.data.io import load_pairs, split_by_prompt
from hafrm.errors import DataError


def _write(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_reads_strings_messages_implicit_prompt_margin_and_gzip(tmp_path):
    recs = [
        {"prompt": "Hi", "chosen": "Hello", "rejected": "Go away", "margin": 1.5},
        {
            "prompt": [{"role": "user", "content": "Q"}],
            "chosen": [{"role": "assistant", "content": "A"}],
            "rejected": [{"role": "assistant", "content": "B"}],
        },
        {
            "chosen": [{"role": "user", "content": "Q2"}, {"role": "assistant", "content": "A2"}],
            "rejected": [{"role": "user", "content": "Q2"}, {"role": "assistant", "content": "B2"}],
        },
    ]
    path = tmp_path / "d.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.write("".join(json.dumps(r) + "\n" for r in recs))
    pairs = load_pairs(path)
    assert [p.chosen for p in pairs] == ["Hello", "A", "A2"]
    assert pairs[0].margin == 1.5 and pairs[2].prompt == [{"role": "user", "content": "Q2"}]
    assert pairs[0].source == "d"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"prompt": "a", "chosen": "b"', "d.jsonl:2: invalid JSON"),
        ('{"prompt": "a", "chosen": "b"}', "d.jsonl:2: missing field 'rejected'"),
        ('{"prompt": "a", "chosen": 5, "rejected": "c"}', "d.jsonl:2: field 'chosen' must be a string"),
        ('{"prompt": "a", "chosen": " ", "rejected": "c"}', "d.jsonl:2: field 'chosen' is empty"),
        ('{"prompt": "a", "chosen": "b", "rejected": "b"}', "d.jsonl:2: fields 'chosen' and 'rejected' are identical"),
        ('{"prompt": 7, "chosen": "b", "rejected": "c"}', "d.jsonl:2: field 'prompt' must be a string or a list"),
        ("[1, 2]", "d.jsonl:2: expected a JSON object"),
        (
            '{"prompt": "a", "chosen": "b", "rejected": "c", "margin": "x"}',
            "d.jsonl:2: field 'margin' must be a number",
        ),
    ],
)
def test_bad_records_name_file_line_and_field(tmp_path, line, message):
    path = _write(tmp_path / "d.jsonl", ['{"prompt": "ok", "chosen": "x", "rejected": "y"}', line])
    with pytest.raises(DataError, match=message.replace("(", r"\(")):
        load_pairs(path)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_pairs(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match="no preference pairs"):
        load_pairs(_write(tmp_path / "e.jsonl", [""]))


def test_split_by_prompt_keeps_prompts_on_one_side(tmp_path):
    lines = [json.dumps({"prompt": f"p{i % 10}", "chosen": f"c{i}", "rejected": f"r{i}"}) for i in range(100)]
    pairs = load_pairs(_write(tmp_path / "s.jsonl", lines))
    train, test = split_by_prompt(pairs, 0.3, seed=1)
    assert len(train) + len(test) == 100 and train and test
    assert not {p.prompt_text() for p in train} & {p.prompt_text() for p in test}
    assert split_by_prompt(pairs, 0.3, seed=1) == (train, test)  # deterministic
