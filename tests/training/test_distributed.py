"""Several processes: 2 CPU processes (torchrun, gloo) train as 1 process with the same global batch."""

import json
import subprocess
import sys

import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from hafrm.apps.cli import app

runner = CliRunner()
# measured: weights 7e-8 apart at most, losses 1e-7 (summation order across the two ranks)
TOLERANCE = 1e-5


def _args(model_dir, out, batch_size):
    return ["train", "--model", str(model_dir), "--builtin-pairs", "64", "--precision", "fp32", "--freeze-layers", "2",
            "--alpha", "auto", "--select-by", "step", "--max-steps", "6", "--eval-steps", "3", "--logging-steps", "1",
            "--batch-size", str(batch_size), "--output-dir", str(out)]  # fmt: skip


def _weights(folder):
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out |= {f"{f.name}:{k}": v for k, v in load_file(f).items()}
    return out


def _logged(folder):
    """Per training step, the logged loss, BT loss and alpha (the last checkpoint's log history)."""
    state = json.loads((folder / "checkpoint-6" / "trainer_state.json").read_text())
    return [(r["step"], r["loss"], r["loss/bt"], r["alpha"]) for r in state["log_history"] if "loss" in r]


def test_two_processes_train_as_one_with_the_same_global_batch(tiny_model_dir, tmp_path):
    """1 process with 8 pairs a step against 2 processes with 4 each: the same pairs each step, the same
    losses, the same final weights (within TOLERANCE), an evaluation gathered over both ranks' pairs that
    equals one process's, the frozen-prefix cache on in both ranks, and one writer of the files."""
    one, two = tmp_path / "one", tmp_path / "two"
    result = runner.invoke(app, _args(tiny_model_dir, one, 8))
    assert result.exit_code == 0, result.output
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "hafrm"]
    proc = subprocess.run([*launch, *_args(tiny_model_dir, two, 4)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("held-out accuracy") == 1  # rank 0 reports, the other rank does not
    assert "frozen-prefix cache off" not in proc.stderr

    a, b = _weights(one), _weights(two)
    assert a.keys() == b.keys() and len(a) > 10
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst <= TOLERANCE, worst
    assert any(not torch.equal(a[k], b[k]) for k in a) or worst == 0  # (bit-equal is allowed, not required)
    assert (a["reward_head.safetensors:weight"] != 0).any()  # the head trained (and was saved) in both

    steps_one, steps_two = _logged(one), _logged(two)
    assert [s[0] for s in steps_one] == [s[0] for s in steps_two] == [1, 2, 3, 4, 5, 6]
    for x, y in zip(steps_one, steps_two, strict=True):
        assert all(abs(u - v) <= TOLERANCE for u, v in zip(x[1:], y[1:], strict=True)), (x, y)

    m1, m2 = (json.loads((d / "metrics.json").read_text()) for d in (one, two))
    assert m1["eval/pairs"] == m2["eval/pairs"] == 24  # every held-out pair, not one rank's share
    for key in ("eval/reward_head/accuracy", "eval/implicit/accuracy", "eval/loss"):
        assert abs(m1[key] - m2[key]) <= TOLERANCE, key
    assert m2["train/prefix_cache/misses"] == 0 and m2["train/prefix_cache/hits"] > 0
