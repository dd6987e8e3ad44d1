"""Fuzz: thousands of malformed records give a clear error or a counted skip, never a traceback or a loss."""

import json
import re
import string
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hafrm.data.formats import FORMATS, DataOptions
from hafrm.data.io import load_source
from hafrm.errors import DataError

FIELDS = sorted({f for fmt in FORMATS.values() for f in fmt.fields} | {"margin", "subset", "input", "annotator2"})
TEXT = st.text(alphabet=string.ascii_letters + " \n\t:é", max_size=12)
MESSAGE = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", ""]), "content": TEXT})
LEAF = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.floats(allow_nan=True, allow_infinity=True),
    TEXT,
    st.sampled_from(["model_a", "model_b", "tie", "\n\nHuman: hi\n\nAssistant: yo", "\n\nAssistant: x"]),
)
VALUE = st.recursive(LEAF | st.lists(MESSAGE, max_size=4), lambda inner: st.lists(inner, max_size=3), max_leaves=6)
RANDOM_RECORD = st.dictionaries(st.sampled_from(FIELDS), VALUE, max_size=9)
_CONV = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
VALID = {  # one good record per format; mutations below break them in every way
    "trl": {"prompt": "p", "chosen": "c", "rejected": "r", "margin": 1.0},
    "rewardbench": {"prompt": "p", "chosen": "c", "rejected": "r", "subset": "s"},
    "hh": {"chosen": "\n\nHuman: q\n\nAssistant: a", "rejected": "\n\nHuman: q\n\nAssistant: b"},
    "pku": {"prompt": "p", "response_0": "a", "response_1": "b", "safer_response_id": 0, "better_response_id": 1},
    "pku-pair": {"prompt": "p", "response": ["a", "b"]},
    "arena": {
        "conversation_a": _CONV,
        "conversation_b": [_CONV[0], {"role": "assistant", "content": "b"}],
        "winner": "model_b",
    },
    "alpacafarm": {"instruction": "i", "input": "x", "output_1": "a", "output_2": "b", "preference": 2},
    "pandalm": {
        "instruction": "i",
        "input": "",
        "response1": "a",
        "response2": "b",
        "annotator1": 1,
        "annotator2": 2,
        "annotator3": 1,
    },
    "autoj": {"prompt": "p", "response 1": "a", "response 2": "b", "label": 1},
    "llmbar": {"input": "p", "output_1": "a", "output_2": "b", "label": 1},
}


@st.composite
def mutated_record(draw):
    record = dict(VALID[draw(st.sampled_from(sorted(VALID)))])
    for _ in range(draw(st.integers(0, 2))):
        key = draw(st.sampled_from(sorted(record)))
        action = draw(st.sampled_from(["delete", "replace", "empty", "copy"]))
        if action == "delete":
            del record[key]
        elif action == "replace":
            record[key] = draw(VALUE)
        elif action == "empty":
            record[key] = ""
        else:  # make two fields the same (identical responses)
            record[key] = record[draw(st.sampled_from(sorted(record)))]
        if not record:
            break
    return record


RECORD = st.one_of(mutated_record(), RANDOM_RECORD)
LINE = st.one_of(
    RECORD.map(json.dumps),
    VALUE.map(json.dumps),  # valid JSON that is not an object
    st.text(max_size=30).filter(lambda s: "\n" not in s and "\r" not in s),  # mostly invalid JSON
)
# \u2028 and friends are line breaks for str.splitlines but not for file iteration: keep them out of
# the garbage lines so that line numbers stay comparable with the file's.
_LINE_BREAKS = re.compile(r"[\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")


def _write(lines: list[str]) -> Path:
    f = tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False, encoding="utf-8")
    f.write("".join(_LINE_BREAKS.sub(" ", line) + "\n" for line in lines))
    f.close()
    return Path(f.name)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(LINE, min_size=1, max_size=8), st.sampled_from([None, *FORMATS]))
def test_every_record_is_kept_dropped_or_a_named_error(lines, fmt):
    path = _write(lines)
    nonblank = sum(bool(line.strip()) for line in path.read_text(encoding="utf-8").split("\n"))
    try:
        # skip mode: everything is accounted for, or the whole file is refused with its name
        try:
            pairs, report = load_source(str(path), DataOptions(format=fmt, on_error="skip"))
        except DataError as e:
            assert str(e).startswith(str(path)), str(e)
        else:
            assert report.records == nonblank
            assert report.kept == len(pairs)
            assert report.kept + sum(report.dropped.values()) + sum(report.skipped.values()) == report.records
            assert set(report.first_error) == set(report.skipped)
        # raise mode: the first bad record stops the load with its file:line, or everything loads
        try:
            pairs, report = load_source(str(path), DataOptions(format=fmt))
        except DataError as e:
            assert re.match(re.escape(str(path)) + r"(:\d+)?: ", str(e)), str(e)
        else:
            assert not report.skipped and report.kept + sum(report.dropped.values()) == report.records
    finally:
        path.unlink()
