"""--report-to through the Trainer's integrations, --gradient-checkpointing, peak memory in metrics.json."""

import json

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from hafrm.apps.cli import app
from hafrm.config import HafConfig
from hafrm.errors import ConfigError
from hafrm.training.recipe import setup_model

runner = CliRunner()


def _train(model_dir, out, *extra):
    args = ["train", "--model", str(model_dir), "--builtin-pairs", "48", "--batch-size", "4", "--precision", "fp32",
            "--max-steps", "3", "--logging-steps", "1", "--select-by", "step",
            "--output-dir", str(out), *extra]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return result


def test_tensorboard_event_files_hold_the_training_metrics(tiny_model_dir, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    _train(tiny_model_dir, out, "--report-to", "tensorboard")
    events = sorted(out.rglob("events.out.tfevents*"))
    assert events, sorted(p.relative_to(out) for p in out.rglob("*"))
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/loss/bt", "train/loss/policy", "train/reward_head/accuracy"} <= tags, tags
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2, 3]


def test_wandb_offline_run_is_written(tiny_model_dir, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-dir"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    _train(tiny_model_dir, tmp_path / "run", "--report-to", "wandb")
    runs = list((tmp_path / "wandb-dir").rglob("offline-run-*"))
    assert runs and any(f.suffix == ".wandb" for f in runs[0].iterdir())


def test_report_to_rejects_an_unknown_integration():
    with pytest.raises(ConfigError, match=r"report_to: \['mlflw'\] unknown"):
        HafConfig(report_to="tensorboard,mlflw")


@pytest.mark.parametrize("frozen", ["0", "2"])
def test_gradient_checkpointing_trains_to_the_same_weights(tiny_model_dir, tmp_path, frozen):
    """Recomputing activations in backward changes memory, not the result (the frozen-prefix cache on with 2)."""
    plain, checkpointed = tmp_path / "plain", tmp_path / "gc"
    _train(tiny_model_dir, plain, "--freeze-layers", frozen)
    _train(tiny_model_dir, checkpointed, "--freeze-layers", frozen, "--gradient-checkpointing")
    a, b = (
        load_file(d / "model.safetensors") | load_file(d / "reward_head.safetensors") for d in (plain, checkpointed)
    )
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst <= 1e-6 and any(not torch.equal(a[k], torch.zeros_like(a[k])) for k in a)
    card = json.loads((checkpointed / "hafrm_config.json").read_text())
    assert card["train_config"]["gradient_checkpointing"] is True
    setup = setup_model(HafConfig(model=str(tiny_model_dir), freeze_layers=int(frozen), gradient_checkpointing=True))
    assert setup.model.backbone.is_activation_checkpointing


def test_peak_memory_is_in_metrics_and_the_summary(tiny_model_dir, tmp_path):
    result = _train(tiny_model_dir, tmp_path / "run")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["train/peak_rss_mib"] > 100  # torch alone takes more
    assert "peak memory" in result.output and "MiB RSS" in result.output
