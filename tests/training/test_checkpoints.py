"""Checkpoints: written whole or not at all, and a run killed at any step resumes to the same weights."""

import logging
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from hafrm.apps.cli import app
from hafrm.training.checkpoints import checkpoint_sizes, complete_checkpoints, last_checkpoint
from hafrm.training.trainer import HafTrainer

runner = CliRunner()


def _args(model_dir, out, *extra):
    return ["train", "--model", str(model_dir), "--builtin-pairs", "48", "--batch-size", "2", "--precision", "fp32",
            "--freeze-layers", "2", "--select-by", "step", "--output-dir", str(out), *extra]  # fmt: skip


def _weights(folder):
    """Every tensor of a saved model folder (backbone and reward head)."""
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out |= {f"{f.name}:{k}": v for k, v in load_file(f).items()}
    return out


def test_a_run_killed_at_a_random_step_resumes_to_identical_weights(tiny_model_dir, tmp_path, caplog):
    """SIGKILL just after a checkpoint chosen at random, then --resume: the final weights equal an
    uninterrupted run's bit for bit, with the bottom layers frozen and served from the frozen-prefix
    cache in both (the default recipe freezes layers)."""
    steps = ["--max-steps", "40", "--save-steps", "4", "--eval-steps", "20", "--save-total-limit", "3"]
    whole = tmp_path / "whole"
    assert runner.invoke(app, _args(tiny_model_dir, whole, *steps)).exit_code == 0
    killed = tmp_path / "killed"
    # killed after a checkpoint chosen at random past the first epoch (19 steps), where the order is redrawn
    at = random.Random(os.getpid()).choice(range(20, 37, 4))
    cmd = [sys.executable, "-m", "hafrm.apps.cli", *_args(tiny_model_dir, killed, *steps)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (killed / f"checkpoint-{at}").is_dir():
        assert proc.poll() is None, f"the run ended before checkpoint-{at}: {proc.stderr.read()[-2000:]}"
        assert time.time() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "model.safetensors").exists()  # it did not finish
    left = last_checkpoint(killed)
    assert left is not None and int(left.rsplit("-", 1)[1]) >= at
    with caplog.at_level(logging.INFO, logger="hafrm"):
        result = runner.invoke(app, [*_args(tiny_model_dir, killed, *steps), "--resume"])
    assert result.exit_code == 0, result.output
    assert "frozen-prefix cache off" not in caplog.text  # the resumed run takes the same path
    assert "frozen-prefix cache:" in caplog.text
    a, b = _weights(whole), _weights(killed)
    assert a.keys() == b.keys() and len(a) > 10
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"killed after checkpoint-{at}: {len(differ)} tensors differ, e.g. {differ[:3]}"


def test_a_save_that_fails_midway_leaves_the_previous_checkpoint(tiny_model_dir, tmp_path, monkeypatch):
    out = tmp_path / "run"
    steps = ["--max-steps", "6", "--save-steps", "2", "--eval-steps", "2"]
    original = HafTrainer._save_rng_state
    calls = {"n": 0}

    def failing(self, output_dir):  # the second checkpoint dies after its weights and optimizer
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full (injected)")
        return original(self, output_dir)

    monkeypatch.setattr(HafTrainer, "_save_rng_state", failing)
    result = runner.invoke(app, _args(tiny_model_dir, out, *steps))
    assert result.exit_code != 0 and "disk full" in str(result.exception)
    assert [os.path.basename(p) for p in complete_checkpoints(out)] == ["checkpoint-2"]
    assert not (out / "checkpoint-4").exists() and (out / ".tmp-checkpoint-4").is_dir()  # half written, aside
    monkeypatch.setattr(HafTrainer, "_save_rng_state", original)
    result = runner.invoke(app, [*_args(tiny_model_dir, out, *steps), "--resume"])
    assert result.exit_code == 0, result.output
    assert [os.path.basename(p) for p in complete_checkpoints(out)] == ["checkpoint-4", "checkpoint-6"]
    assert not list(out.glob(".tmp-*"))  # the next save cleared the staging folder


def test_a_folder_without_trainer_state_is_not_resumed_from(tmp_path, caplog):
    for step, whole in ((2, True), (4, True), (6, False)):
        (tmp_path / f"checkpoint-{step}").mkdir()
        if whole:
            (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-x").mkdir()
    assert last_checkpoint(tmp_path) == str(tmp_path / "checkpoint-4")
    assert "checkpoint-6 is incomplete" in caplog.text
    assert last_checkpoint(tmp_path / "nothing") is None


@pytest.mark.parametrize("changed", [False, True])
def test_the_cache_stays_on_for_a_resume_when_the_frozen_layers_match(tokenizer, tmp_path, changed):
    from hafrm.config import HafConfig
    from hafrm.modeling.hybrid import HybridRewardModel
    from hafrm.training.recipe import prefix_blocker
    from helpers import tiny_backbone

    model = HybridRewardModel(tiny_backbone("llama", len(tokenizer), layers=4))
    model.freeze_bottom(2)
    cfg = HafConfig(resume=True, output_dir=str(tmp_path))
    assert prefix_blocker(cfg, model) is None  # nothing to resume from yet
    checkpoint = tmp_path / "checkpoint-3"
    model.save_pretrained(checkpoint)
    (checkpoint / "trainer_state.json").write_text("{}")
    if changed:
        with torch.no_grad():
            model.backbone.model.layers[0].mlp.up_proj.weight[0, 0] += 1e-3
    why = prefix_blocker(cfg, model)
    assert (why is not None and "frozen layers of" in why) if changed else why is None


def test_save_only_model_checkpoints_are_smaller_and_refuse_a_resume(tiny_model_dir, tmp_path):
    full, slim = tmp_path / "full", tmp_path / "slim"
    steps = ["--max-steps", "2", "--save-steps", "2", "--eval-steps", "2"]
    assert runner.invoke(app, _args(tiny_model_dir, full, *steps)).exit_code == 0
    assert runner.invoke(app, _args(tiny_model_dir, slim, *steps, "--save-only-model")).exit_code == 0
    assert (full / "checkpoint-2" / "optimizer.pt").is_file() and not (slim / "checkpoint-2" / "optimizer.pt").exists()
    sizes = checkpoint_sizes(full / "checkpoint-2")
    assert sizes.startswith(f"{sum(f.stat().st_size for f in (full / 'checkpoint-2').iterdir()) / 2**20:.0f} MiB")
    assert "optimizer 0" in checkpoint_sizes(slim / "checkpoint-2")
    result = runner.invoke(app, [*_args(tiny_model_dir, slim, "--max-steps", "4"), "--resume"])
    assert result.exit_code == 2
    assert "checkpoint-2 holds the model only (saved with --save-only-model)" in result.output
