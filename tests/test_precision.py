"""Precision is chosen by measurement, not assumed."""

import hafrm.precision as precision


def test_explicit_precision_is_kept():
    assert precision.resolve_precision("fp32") == "fp32"
    assert precision.resolve_precision("bf16") == "bf16"


def test_auto_follows_the_measured_speeds(monkeypatch):
    monkeypatch.setattr(precision, "cpu_matmul_gflops", lambda: {"fp32": 150.0, "bf16": 1.3})
    assert precision.resolve_precision("auto") == "fp32"
    monkeypatch.setattr(precision, "cpu_matmul_gflops", lambda: {"fp32": 150.0, "bf16": 450.0})
    assert precision.resolve_precision("auto") == "bf16"


def test_probe_measures_both_dtypes():
    speeds = precision.cpu_matmul_gflops()
    assert set(speeds) == {"fp32", "bf16"} and all(v > 0 for v in speeds.values())
