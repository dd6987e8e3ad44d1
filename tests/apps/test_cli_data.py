"""`hafrm data inspect / convert`, and `hafrm train` on a mix of sources in different formats."""

import json
from pathlib import Path

from typer.testing import CliRunner

from hafrm.apps.cli import app

runner = CliRunner()
ASSETS = Path(__file__).parents[1] / "assets"


def test_inspect_reports_format_counts_drops_and_token_lengths(tiny_model_dir, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "p", "chosen": "c", "rejected": "r"}) + "\n{oops\n")
    out = tmp_path / "inspect.json"
    result = runner.invoke(
        app,
        ["data", "inspect", str(ASSETS / "arena.jsonl"), str(bad), "--model", str(tiny_model_dir), "--json", str(out)],
    )
    assert result.exit_code == 0, result.output
    assert "arena" in result.output and "tie" in result.output and "invalid JSON" in result.output
    arena, broken = json.loads(out.read_text())
    assert (arena["format"], arena["records"], arena["kept"], arena["dropped"]) == ("arena", 4, 2, {"tie": 2})
    assert arena["prompts"] == 2 and arena["tokens"]["chosen"]["max"] > arena["tokens"]["prompt"]["max"]
    assert broken["skipped"] == {"invalid JSON": 1} and broken["first_error"]["invalid JSON"].startswith(f"{bad}:2:")


def test_convert_then_train_on_a_mix_of_two_formats(tiny_model_dir, tmp_path):
    norm = tmp_path / "pku.jsonl"
    result = runner.invoke(app, ["data", "convert", str(ASSETS / "pku_native.jsonl"), "--out", str(norm)])
    assert result.exit_code == 0, result.output
    assert len(norm.read_text().splitlines()) == 3
    many = tmp_path / "own.jsonl"  # a custom schema, read through --map
    many.write_text(
        "".join(
            json.dumps({"q": f"Question {i}?", "good": f"Answer {i}.", "bad": f"Nope {i}."}) + "\n" for i in range(30)
        )
    )
    out = tmp_path / "run"
    args = ["train", "--model", str(tiny_model_dir), "--data", str(norm), "--data", str(many), "--max-steps", "2"]
    args += ["--map", "prompt=q", "--map", "chosen=good", "--map", "rejected=bad", "--output-dir", str(out)]
    result = runner.invoke(app, args)
    # --map applies to every source; the converted file has no 'q' field, so it fails with its line
    assert result.exit_code == 2 and "pku.jsonl:1: missing field 'q' (mapped to prompt)" in result.output
    trl = tmp_path / "trl.jsonl"
    trl.write_text(
        "".join(json.dumps({"prompt": f"Q{i}?", "chosen": f"A{i}.", "rejected": f"N{i}."}) + "\n" for i in range(30))
    )
    args = ["train", "--model", str(tiny_model_dir), "--data", str(norm), "--data", str(ASSETS / "arena.jsonl")]
    args += ["--data", str(trl), "--max-steps", "2", "--eval-fraction", "0.3"]
    result = runner.invoke(app, [*args, "--output-dir", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads((out / "data.json").read_text())
    assert [(s["source"], s["format"], s["kept"]) for s in data["sources"]] == [
        ("pku", "trl", 3),
        ("arena", "arena", 2),
        ("trl", "trl", 30),
    ]
    assert data["sources"][1]["dropped"] == {"tie": 2}
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train/pairs"] + metrics["eval/pairs"] == 35  # nothing lost between the sources and training
