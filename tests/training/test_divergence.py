"""The divergence guard: a NaN or inf loss or gradient stops training at that step with one line
naming the step and the batch's pairs, exit 2, and the last checkpoint left as it was."""

import dataclasses
import json

import pytest
import torch
from typer.testing import CliRunner

import hafrm
from hafrm.apps.cli import app
from hafrm.objectives.haf import HybridObjective
from helpers import make_pairs

runner = CliRunner()
BAD_STEP = 4  # the optimizer step (1-based) whose loss or gradient is broken


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "pairs.jsonl"
    lines = [json.dumps({"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected}) for p in make_pairs(16)]
    path.write_text("\n".join(lines) + "\n")
    return path


def _break(monkeypatch, what: str):
    """Make the loss of optimizer step BAD_STEP a NaN, or finite with a NaN gradient."""
    original = HybridObjective.loss_parts
    calls = {"n": 0}

    def loss_parts(self, out, batch, with_policy, progress):
        parts = original(self, out, batch, with_policy, progress)
        if progress is None:  # evaluation
            return parts
        calls["n"] += 1
        if calls["n"] != BAD_STEP:
            return parts
        if what == "loss":
            bad = parts.loss * float("nan")
        else:  # finite value, NaN gradient: d/dx sqrt(x) at x < 0, kept out of the value by where()
            bad = parts.loss + torch.where(torch.tensor(True), 0.0, torch.sqrt(-parts.loss.abs() - 1))
        return dataclasses.replace(parts, loss=bad)

    monkeypatch.setattr(HybridObjective, "loss_parts", loss_parts)


@pytest.mark.parametrize("what", ["loss", "gradient"])
def test_a_nan_stops_training_and_keeps_the_last_checkpoint(tiny_model_dir, data_file, tmp_path, monkeypatch, what):
    out = tmp_path / "run"
    _break(monkeypatch, what)
    args = ["train", "--model", str(tiny_model_dir), "--data", str(data_file), "--eval-data", str(data_file)]
    args += ["--batch-size", "2", "--max-steps", "6", "--save-steps", "2", "--eval-steps", "2", "--no-packing"]
    result = runner.invoke(app, [*args, "--output-dir", str(out)])
    assert result.exit_code == 2, result.output
    line = result.output.strip().splitlines()[-1]
    assert f"training diverged at step {BAD_STEP}" in line
    assert ("the loss is nan" if what == "loss" else "the gradient norm is nan") in line
    assert f"{data_file}:" in line  # the batch's pairs by file and line
    assert "Traceback" not in result.output
    # the step before was checkpointed and nothing after it was written
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]
    assert "checkpoint-2" in line
    model = hafrm.load(out / "checkpoint-2")
    scores = model.score_batch(["What is 2+2?"], ["4"])
    assert all(map(lambda s: s == s, scores))  # finite, loadable


def test_the_pairs_are_named_by_file_and_line(data_file):
    from hafrm.data.io import load_pairs

    pairs = load_pairs(str(data_file))
    assert [p.origin for p in pairs[:3]] == [f"{data_file}:1", f"{data_file}:2", f"{data_file}:3"]
    assert pairs[0] == type(pairs[0])(pairs[0].prompt, pairs[0].chosen, pairs[0].rejected, source=pairs[0].source)
