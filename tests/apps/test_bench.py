"""`hafrm bench` mechanics on a tiny model (the timings themselves are not tested)."""

import json

from typer.testing import CliRunner

from hafrm.apps.cli import app


def test_bench_writes_contenders_and_ratios(tiny_model_dir, tmp_path):
    out = tmp_path / "bench.json"
    args = ["bench", "--model", str(tiny_model_dir), "--data", "builtin", "--pairs", "12", "--batch-size", "4"]
    args += ["--steps", "2", "--out", str(out)]
    for name in ("hafrm_reward", "hafrm_hybrid", "seqcls_score", "hafrm_score"):
        args += ["--contender", name]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    results = report["results"]
    assert set(results) == {"hafrm_reward", "hafrm_hybrid", "seqcls_score", "hafrm_score"}
    for name in ("hafrm_reward", "hafrm_hybrid"):
        r = results[name]
        assert r["step_time_s"] > 0 and r["tokens_per_s"] > 0 and r["peak_rss_mib"] > 0
    assert results["hafrm_hybrid"]["reference_pass_s"] > 0 and results["hafrm_reward"]["reference_pass_s"] == 0
    assert report["ratio/hybrid_vs_reward_step_time"] > 0 and report["ratio/score_vs_seqcls_pairs_per_s"] > 0
    assert report["ratio/hybrid_vs_trl_dpo_pairs_per_s"] is None  # not run: no number, rather than a made-up one
    assert report["machine"]["matmul_peak_gflops_fp32"] > 0


def test_unknown_contender_is_exit_2(tmp_path):
    result = CliRunner().invoke(app, ["bench", "--contender", "vllm", "--out", str(tmp_path / "b.json")])
    assert result.exit_code == 2 and "unknown contender" in result.output
