"""`hafrm bench` mechanics on a tiny model (the timings themselves are not tested)."""

import json

import pytest
import torch
from typer.testing import CliRunner

from hafrm.apps import bench
from hafrm.apps.cli import app

# Made-up matmul peaks (GFLOP/s), far apart, so an MFU against the wrong precision's peak shows.
PEAKS = {torch.float32: 100.0, torch.bfloat16: 1.0}
RUN = ("hafrm_reward", "hafrm_hybrid", "hafrm_hybrid_shared", "seqcls_score", "hafrm_score")


@pytest.fixture(scope="module")
def report(tiny_model_dir, tmp_path_factory):
    """One bench run of every contender but TRL's (batches of 4 pairs, 2 timed steps), in fp32."""
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    args = ["bench", "--model", str(tiny_model_dir), "--data", "builtin", "--pairs", "12", "--batch-size", "4"]
    args += ["--steps", "2", "--out", str(out)]
    for name in RUN:
        args += ["--contender", name]
    with pytest.MonkeyPatch.context() as mp:  # the peaks are measured in this process, not the contenders'
        mp.setattr(bench, "matmul_peak_gflops", lambda dtype: PEAKS[dtype])
        result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return json.loads(out.read_text())


def test_bench_writes_contenders_and_ratios(report):
    results = report["results"]
    assert set(results) == set(RUN)
    for name in ("hafrm_reward", "hafrm_hybrid", "hafrm_hybrid_shared"):
        r = results[name]
        assert r["step_time_s"] > 0 and r["tokens_per_s"] > 0 and r["peak_rss_mib"] > 0
        assert len(r["per_step"]["loss"]) == 3  # the warm-up step and the 2 timed ones
    assert results["hafrm_hybrid"]["reference_pass_s"] > 0 and results["hafrm_reward"]["reference_pass_s"] == 0
    assert report["ratio/hybrid_vs_reward_step_time"] > 0 and report["ratio/score_vs_seqcls_pairs_per_s"] > 0
    assert report["ratio/hybrid_vs_trl_dpo_pairs_per_s"] is None  # not run: no number, rather than a made-up one
    first = {"fp32": 100.0, "bf16": 1.0}  # the probe before the contenders; the peaks: the better of it and after
    assert report["machine"] == {"matmul_peak_gflops_fp32": 100.0, "matmul_peak_gflops_bf16": 1.0,
                                 "first_probe_gflops": first}  # fmt: skip


def test_prefix_shared_contender_same_pairs_same_losses(report):
    packed, shared = report["results"]["hafrm_hybrid"], report["results"]["hafrm_hybrid_shared"]
    ratio = report["ratio/hybrid_shared_vs_hybrid_pairs_per_s"]
    assert ratio == pytest.approx(shared["pairs_per_s"] / packed["pairs_per_s"])
    assert shared["reference_pass_s"] > 0
    # the same model trained on the same pairs in fp32: the same losses and log-probs at every step,
    # to rounding (a rejected branch that sees the chosen one: 9e-4 and 3e-2 here)
    for key, tolerance in (("loss", 1e-4), ("logps", 1e-3)):
        names = ["loss"] if key == "loss" else ["logps/chosen", "logps/rejected"]
        steps = [zip(packed["per_step"][n], shared["per_step"][n], strict=True) for n in names]
        largest = max(abs(a - b) for pairs in steps for a, b in pairs)
        assert report[f"max_{key}_difference/hybrid_shared_vs_hybrid"] == pytest.approx(largest)
        assert largest < tolerance
    assert len(set(packed["per_step"]["logps/chosen"])) == 3  # three batches, three numbers to compare
    # the built-in task's pairs share their prompt: the collator's rows are shorter, and the FLOPs
    # counted per pair fewer, while tokens/s still counts both sequences whole
    assert shared["row_tokens_per_step"] < packed["row_tokens_per_step"]
    flops_per_pair = {k: r["model_flops_per_s"] / r["pairs_per_s"] for k, r in (("p", packed), ("s", shared))}
    assert flops_per_pair["s"] < flops_per_pair["p"]
    tokens_per_pair = [r["tokens_per_s"] / r["pairs_per_s"] for r in (packed, shared)]
    assert tokens_per_pair[0] == pytest.approx(tokens_per_pair[1])


def test_mfu_is_against_the_peak_of_the_precision_run(report):
    results = report["results"]
    for name in ("hafrm_reward", "hafrm_hybrid", "hafrm_hybrid_shared"):
        r = results[name]
        assert r["precision"] == "fp32"
        assert r["mfu"] == pytest.approx(r["model_flops_per_s"] / 100e9)  # the fp32 peak, not bf16's 1.0
    assert "mfu" not in results["hafrm_score"]  # scoring has no FLOPs count
    assert report["mfu/hybrid"] == results["hafrm_hybrid"]["mfu"]
    assert report["mfu/hybrid_shared"] == results["hafrm_hybrid_shared"]["mfu"]
    peaks = {"fp32": 100.0, "bf16": 400.0}
    assert bench.mfu({"model_flops_per_s": 50e9, "precision": "bf16"}, peaks) == pytest.approx(0.125)
    assert bench.mfu({"model_flops_per_s": 50e9, "precision": "fp32"}, peaks) == pytest.approx(0.5)


def test_matmul_peak_is_measured():
    assert bench.matmul_peak_gflops(torch.float32, sizes=(64,), seconds=0.05) > 0


def test_default_contenders_include_the_prefix_shared_one():
    assert "hafrm_hybrid_shared" in bench.BenchSpec().contenders


def test_unknown_contender_is_exit_2(tmp_path):
    result = CliRunner().invoke(app, ["bench", "--contender", "vllm", "--out", str(tmp_path / "b.json")])
    assert result.exit_code == 2 and "unknown contender" in result.output


def test_the_peaks_are_the_better_of_a_probe_before_and_one_after_the_contenders(tiny_model_dir, monkeypatch):
    probes = iter([50.0, 1.0, 80.0, 0.5])  # fp32 then bf16, before the contenders; then after them
    monkeypatch.setattr(bench, "matmul_peak_gflops", lambda dtype: next(probes))
    spec = bench.BenchSpec(model=str(tiny_model_dir), data="builtin", pairs=4, contenders=[])
    machine = bench.run_bench(spec, log=lambda *a: None)["machine"]
    assert machine == {"matmul_peak_gflops_fp32": 80.0, "matmul_peak_gflops_bf16": 1.0,
                       "first_probe_gflops": {"fp32": 50.0, "bf16": 1.0}}  # fmt: skip
