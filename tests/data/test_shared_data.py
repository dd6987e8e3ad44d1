"""The real public test splits in ../shared/data read with the counts their sources publish (skip if absent)."""

import json
from pathlib import Path

import pytest

from hafrm.data.formats import DataOptions
from hafrm.data.io import load_source

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
pytestmark = pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data is not here")
SKIP = DataOptions(on_error="skip")


@pytest.mark.parametrize(
    ("name", "fmt", "records", "kept", "dropped", "skipped"),
    [
        ("hh-helpful-base-test.jsonl.gz", "hh", 2354, 2348, {}, {"empty response": 4, "identical responses": 2}),
        ("hh-harmless-base-test.jsonl.gz", "hh", 2312, 2308, {}, {"empty response": 4}),
        ("pku-saferlhf-safer-test.json.gz", "pku-pair", 5135, 5135, {}, {}),
        (
            "autoj-pairwise-test.jsonl.gz",
            "autoj",
            1392,
            1017,
            {"tie": 373},
            {"empty response": 1, "identical responses": 1},
        ),
        (
            "pandalm-test.json.gz",
            "pandalm",
            999,
            835,
            {"tie (annotator majority)": 105},
            {"empty response": 52, "not a string": 6, "empty field": 1},
        ),
    ],
)
def test_shared_files_counts(name, fmt, records, kept, dropped, skipped):
    pairs, rep = load_source(str(SHARED / name), SKIP)
    assert (rep.format, rep.records, rep.kept) == (fmt, records, kept)
    assert dict(rep.dropped) == dropped and dict(rep.skipped) == skipped
    assert rep.accounted == records and len(pairs) == kept


def test_hh_multi_turn_prompts_and_pku_prompts():
    pairs, rep = load_source(str(SHARED / "hh-helpful-base-test.jsonl.gz"), SKIP)
    assert sum(len(p.prompt) > 1 for p in pairs) > 500  # the shared history is kept as turns
    assert all(p.prompt[-1]["role"] == "user" for p in pairs)
    assert rep.notes == {"differ before the last turn (later turns kept in the response)": 9}
    pku, _ = load_source(str(SHARED / "pku-saferlhf-safer-test.json.gz"))
    assert len({p.prompt_text() for p in pku}) == 930


def test_default_mode_stops_at_the_first_bad_record_with_its_line():
    with pytest.raises(Exception, match=r"hh-helpful-base-test.jsonl.gz:\d+: field 'rejected' is empty"):
        load_source(str(SHARED / "hh-helpful-base-test.jsonl.gz"))


def test_train_on_a_mix_of_two_shared_sets(tiny_model_dir, tmp_path):
    from typer.testing import CliRunner

    from hafrm.apps.cli import app

    out = tmp_path / "mix"
    args = ["train", "--model", str(tiny_model_dir), "--output-dir", str(out), "--max-steps", "2"]
    args += ["--data", str(SHARED / "hh-helpful-base-test.jsonl.gz"), "--data", str(SHARED / "pandalm-test.json.gz")]
    args += ["--max-pairs-per-source", "40", "--on-error", "skip", "--max-length", "128", "--max-prompt-length", "64"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    data = json.loads((out / "data.json").read_text())
    hh, panda = data["sources"]
    assert (hh["kept"], hh["capped"], panda["kept"], panda["capped"]) == (40, 2348 - 40, 40, 835 - 40)
    assert panda["skipped"] == {"empty response": 52, "not a string": 6, "empty field": 1}
    assert any(k.startswith("train/truncated/hh-helpful-base-test/") for k in data["tokenisation"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train/pairs"] + metrics["eval/pairs"] == 80
    assert {"eval/tag/hh-helpful-base-test/reward_head/accuracy", "eval/tag/pandalm-test/implicit/accuracy"} <= set(
        metrics
    )  # accuracy per source
