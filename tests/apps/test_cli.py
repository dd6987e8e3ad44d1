"""The CLI end to end on a tiny random model, and one-line errors (exit 2) for bad input."""

import json
import shutil
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from hafrm.apps.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    args = [
        "train",
        "--model",
        str(tiny_model_dir),
        "--max-steps",
        "4",
        "--eval-steps",
        "2",
        "--builtin-pairs",
        "48",
        "--output-dir",
        str(out),
        "--batch-size",
        "4",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return out, result


def test_train_writes_model_metrics_and_table(trained):
    out, result = trained
    for name in (
        "config.json",
        "model.safetensors",
        "reward_head.safetensors",
        "hafrm_config.json",
        "tokenizer.json",
        "metrics.json",
    ):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    for key in (
        "eval/reward_head/accuracy",
        "eval/implicit/accuracy",
        "eval/accuracy",
        "train/pairs",
        "eval/shortcut/bag_of_words",
        "eval/shortcut/length_longer",
    ):
        assert key in metrics, key
    assert 0.0 <= metrics["eval/reward_head/accuracy"] <= 1.0
    assert metrics["train/steps"] == 4 and metrics["train/selected_step"] in (2, 4)
    phases = ("model_and_data", "prefix_cache", "reference", "fit", "save_and_extra_eval")
    assert all(metrics[f"train/seconds/{p}"] >= 0 for p in phases)  # where the time went, in order
    assert sum(metrics[f"train/seconds/{p}"] for p in phases) == pytest.approx(metrics["train/seconds"], abs=1.0)
    assert "reward_head" in result.output and "implicit" in result.output and "│ all" in result.output
    for skill in ("arithmetic", "facts", "format"):  # per skill, and per subtype under it
        assert f"eval/tag/{skill}/reward_head/accuracy" in metrics
        assert any(k.startswith(f"eval/subset/{skill}.") and k.endswith("/reward_head/accuracy") for k in metrics)
    assert "arithmetic." in result.output
    assert json.loads((out / "hafrm_config.json").read_text())["mode"] == "hybrid"


def test_eval_command_reproduces_training_metrics(trained, tmp_path):
    out, _ = trained
    dest = tmp_path / "m.json"
    result = runner.invoke(app, ["eval", str(out), "--data", "builtin", "--out", str(dest)])
    assert result.exit_code == 0, result.output
    metrics = json.loads(dest.read_text())
    trained_metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["reward_head/accuracy"] == pytest.approx(trained_metrics["eval/reward_head/accuracy"])
    assert metrics["implicit/accuracy"] == pytest.approx(trained_metrics["eval/implicit/accuracy"])
    # one skill of the model's task: that skill's rows of the same held-out split
    result = runner.invoke(app, ["eval", str(out), "--data", "builtin:facts", "--out", str(dest)])
    assert result.exit_code == 0, result.output
    metrics = json.loads(dest.read_text())
    assert set(json.loads((out / "hafrm_config.json").read_text())["train_config"]["data"]) == {"builtin"}
    assert metrics["pairs"] == sum(1 for p in trained_eval_pairs(out) if p.meta["skill"] == "facts")
    assert metrics["reward_head/accuracy"] == pytest.approx(trained_metrics["eval/tag/facts/reward_head/accuracy"])


def trained_eval_pairs(out):
    from hafrm.config import HafConfig
    from hafrm.data.io import split_by_prompt
    from hafrm.data.sources import builtin_pairs

    cfg = HafConfig.from_dict(json.loads((out / "hafrm_config.json").read_text())["train_config"])
    return split_by_prompt(builtin_pairs(cfg), cfg.eval_fraction, cfg.seed)[1]


def test_score_jsonl_both_shapes(trained, tmp_path):
    out, _ = trained
    singles = tmp_path / "singles.jsonl"
    singles.write_text(
        json.dumps({"prompt": "What is 2 + 2?", "response": "4"})
        + "\n"
        + json.dumps({"prompt": [{"role": "user", "content": "Hi"}], "response": "Hello!"})
        + "\n"
    )
    result = runner.invoke(app, ["score", str(out), "--input", str(singles)])
    assert result.exit_code == 0, result.output
    assert len([float(x) for x in result.stdout.split()]) == 2
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"prompt": "What is 2 + 2?", "chosen": "4", "rejected": "5"}) + "\n")
    dest = tmp_path / "scored.jsonl"
    result = runner.invoke(app, ["score", str(out), "--input", str(pairs), "--output", str(dest)])
    assert result.exit_code == 0, result.output
    row = json.loads(dest.read_text())
    assert row["chosen"] == "4" and isinstance(row["score_chosen"], float) and "score_rejected" in row


def test_training_stores_score_statistics_that_eval_reproduces(trained, tmp_path):
    """mean / std of the reward over the eval split (both sides of every pair), saved with the model;
    `hafrm eval --save-stats` on the same split computes the same, and `--normalize` applies them."""
    import shutil

    out, _ = trained
    stats = json.loads((out / "hafrm_config.json").read_text())["reward_stats"]
    pairs = json.loads((out / "metrics.json").read_text())["eval/pairs"]
    assert stats["reward"]["n"] == 2 * pairs and stats["reward"]["std"] > 0
    assert {"mean", "std"} <= set(stats["implicit"])
    copy = tmp_path / "model"
    shutil.copytree(out, copy)
    meta = json.loads((copy / "hafrm_config.json").read_text())
    del meta["reward_stats"]
    (copy / "hafrm_config.json").write_text(json.dumps(meta))
    dest = tmp_path / "m.json"
    result = runner.invoke(app, ["eval", str(copy), "--data", "builtin", "--out", str(dest), "--save-stats"])
    assert result.exit_code == 0, result.output
    assert "reward_head mean" in result.output and "stored in" in result.output
    metrics = json.loads(dest.read_text())
    assert metrics["reward_head/mean"] == pytest.approx(stats["reward"]["mean"], abs=1e-5)
    assert metrics["reward_head/std"] == pytest.approx(stats["reward"]["std"], abs=1e-5)
    rewritten = json.loads((copy / "hafrm_config.json").read_text())
    assert {k: v for k, v in rewritten.items() if k != "reward_stats"} == meta  # nothing else changed
    saved = rewritten["reward_stats"]["reward"]
    assert saved["mean"] == pytest.approx(stats["reward"]["mean"], abs=1e-5) and "builtin" in saved["data"]
    singles = tmp_path / "s.jsonl"
    singles.write_text(json.dumps({"prompt": "What is 2 + 2?", "response": "4"}) + "\n")
    raw = float(runner.invoke(app, ["score", str(out), "--input", str(singles)]).stdout)
    norm = float(runner.invoke(app, ["score", str(out), "--input", str(singles), "--normalize"]).stdout)
    assert norm == pytest.approx((raw - stats["reward"]["mean"]) / stats["reward"]["std"], abs=1e-5)


def test_eval_of_a_rewardbench_file_gives_its_section_scores(trained, tmp_path):
    from hafrm.evaluation.rewardbench import REWARDBENCH_COUNTS, REWARDBENCH_SECTIONS

    out, _ = trained
    rows = []
    for j, subset in enumerate(REWARDBENCH_SECTIONS["Chat"]):
        for i in range(2):
            rows.append({"prompt": f"What is {i} + {j}?", "chosen": str(i + j), "rejected": f"{i + j + 1}, surely",
                         "subset": subset, "id": len(rows)})  # fmt: skip
    data = tmp_path / "rb.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    dest = tmp_path / "m.json"
    result = runner.invoke(app, ["eval", str(out), "--data", str(data), "--format", "rewardbench", "--out", str(dest)])
    assert result.exit_code == 0, result.output
    assert "RewardBench Chat" in result.output
    m = json.loads(dest.read_text())
    subsets = REWARDBENCH_SECTIONS["Chat"]
    weights = [REWARDBENCH_COUNTS[s] for s in subsets]
    for head in ("reward_head", "implicit"):
        per = [m[f"subset/{s}/{head}/accuracy"] for s in subsets]
        expected = sum(a * w for a, w in zip(per, weights, strict=True)) / sum(weights)
        assert m[f"rewardbench/Chat/{head}/accuracy"] == pytest.approx(expected)
    assert not any(k.startswith("rewardbench/Safety") for k in m)  # no Safety subsets in the file


def test_score_plot_and_normalize_without_stats(trained, tiny_rm_dir, tokenizer, tmp_path):
    out, _ = trained
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": f"What is {i} + 1?", "chosen": str(i + 1), "rejected": str(i)})
                             + "\n" for i in range(12)))  # fmt: skip
    png = tmp_path / "scores.png"
    result = runner.invoke(app, ["score", str(out), "--input", str(pairs), "--plot", str(png)])
    assert result.exit_code == 0, result.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    from helpers import save_tiny_reward_model

    bare = save_tiny_reward_model(tmp_path / "bare", tokenizer, meta={"mode": "hybrid"})
    result = runner.invoke(app, ["score", str(bare), "--input", str(pairs), "--normalize"])
    assert result.exit_code == 2 and "no reward statistics" in result.output and "--save-stats" in result.output


def test_other_modes_train(tiny_model_dir, tmp_path):
    for mode, extra in (("reward", []), ("dpo", []), ("hybrid", ["--loss", "simpo"])):
        args = [
            "train",
            "--model",
            str(tiny_model_dir),
            "--mode",
            mode,
            "--max-steps",
            "2",
            "--builtin-pairs",
            "24",
            "--output-dir",
            str(tmp_path / mode),
            *extra,
        ]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, (mode, result.output)
        assert (tmp_path / mode / "metrics.json").is_file()


def test_alpha_auto_trains_and_its_state_is_resumed(tiny_model_dir, tmp_path):
    out = tmp_path / "auto"
    args = ["train", "--model", str(tiny_model_dir), "--alpha", "auto", "--builtin-pairs", "24", "--max-steps", "4"]
    args += ["--save-steps", "2", "--eval-steps", "2", "--logging-steps", "1", "--output-dir", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    state = json.loads((out / "checkpoint-2" / "objective_state.json").read_text())["auto_alpha"]
    assert state["decay"] == 0.9 and state["bt"] > 0 and state["policy"] > 0
    history = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())["log_history"]
    logged = [row["alpha"] for row in history if "alpha" in row and "loss" in row]
    assert len(logged) == 4 and len(set(logged)) > 1  # it moves with the losses
    # resumed from checkpoint-2, the running means start where they were (not at 1)
    import hafrm.objectives.haf as haf

    seen = []
    original = haf.AutoAlpha.update
    haf.AutoAlpha.update = lambda self, bt, pol: (seen.append((self.bt, self.policy)), original(self, bt, pol))[1]
    try:
        for checkpoint in ("checkpoint-4",):
            shutil.rmtree(out / checkpoint)
        result = runner.invoke(app, [*args, "--resume"])
    finally:
        haf.AutoAlpha.update = original
    assert result.exit_code == 0, result.output
    assert seen[0] == (pytest.approx(state["bt"]), pytest.approx(state["policy"]))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--mode", "ppo"], "unknown mode 'ppo'; accepted: hybrid, reward, dpo"),
        (["train", "--loss", "kto"], "unknown loss 'kto'"),
        (["train", "--alpha", "-1"], "alpha must be >= 0"),
        (["train", "--alpha", "often"], "alpha must be a number >= 0 or 'auto', got 'often'"),
        (["train", "--alpha-schedule", "zigzag"], "unknown alpha_schedule 'zigzag'; accepted: constant, warmup, decay"),
        (["experiment", "--config", "no/such.yaml", "--output-dir", "x"], "no/such.yaml: no such experiment file"),
        (["train", "--model", "./no/such/model"], "model path ./no/such/model does not exist"),
    ],
)
def test_bad_input_is_one_line_exit_2(args, message):
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


def test_empty_dataset_is_one_line_exit_2(tiny_model_dir, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    result = runner.invoke(
        app, ["train", "--model", str(tiny_model_dir), "--data", str(empty), "--output-dir", str(tmp_path / "o")]
    )
    assert result.exit_code == 2
    assert "empty.jsonl: no preference pairs" in result.output


def test_malformed_line_is_named(tiny_model_dir, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        json.dumps({"prompt": "a", "chosen": "b", "rejected": "c"}) + "\n" + '{"prompt": "a", "chosen": 3}\n'
    )
    result = runner.invoke(
        app, ["train", "--model", str(tiny_model_dir), "--data", str(bad), "--output-dir", str(tmp_path / "o")]
    )
    assert result.exit_code == 2
    assert "bad.jsonl:2: missing field 'rejected'" in result.output


def test_real_process_prints_no_traceback():
    proc = subprocess.run(
        [sys.executable, "-m", "hafrm.apps.cli", "train", "--mode", "nope"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    assert "unknown mode 'nope'" in proc.stderr and "Traceback" not in proc.stderr


def test_resume_continues_from_the_last_checkpoint(tiny_model_dir, tmp_path):
    base = ["train", "--model", str(tiny_model_dir), "--builtin-pairs", "48", "--batch-size", "4",
            "--output-dir", str(tmp_path), "--eval-steps", "2", "--select-by", "step"]  # fmt: skip
    assert runner.invoke(app, [*base, "--max-steps", "2"]).exit_code == 0
    assert (tmp_path / "checkpoint-2").is_dir()
    result = runner.invoke(app, [*base, "--max-steps", "4", "--resume"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["train/steps"] == 4
    state = json.loads((tmp_path / "checkpoint-4" / "trainer_state.json").read_text())
    assert [e["step"] for e in state["log_history"] if "eval_loss" in e] == [2, 4]  # step 2 came from the first run


def test_freezing_more_layers_than_the_model_has_is_exit_2(tiny_model_dir, tmp_path):
    args = ["train", "--model", str(tiny_model_dir), "--freeze-layers", "9", "--output-dir", str(tmp_path)]
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert "freeze_layers: cannot freeze 9 layers: the decoder has 8 layers" in result.output


def test_more_builtin_pairs_than_the_templates_make_is_exit_2(tiny_model_dir, tmp_path):
    args = ["train", "--model", str(tiny_model_dir), "--builtin-pairs", "5000", "--output-dir", str(tmp_path)]
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert "builtin_pairs: 5000 pairs of arithmetic+facts+format asked for" in result.output
    assert "at most 3462 unique ones" in result.output


def test_optimisation_flags_reach_the_config(monkeypatch):
    import hafrm.training.recipe
    from hafrm.errors import HafError

    seen = {}

    def capture(cfg):
        seen["cfg"] = cfg
        raise HafError("captured")

    monkeypatch.setattr(hafrm.training.recipe, "train", capture)
    args = ["train", "--num-train-epochs", "2.5", "--gradient-accumulation-steps", "3",
            "--reward-head-learning-rate", "0.002", "--learning-rate", "3e-5"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "captured" in result.output
    cfg = seen["cfg"]
    assert (cfg.num_train_epochs, cfg.gradient_accumulation_steps) == (2.5, 3)
    assert (cfg.reward_head_learning_rate, cfg.learning_rate) == (0.002, 3e-5)


def _config_of(monkeypatch, args):
    """The HafConfig `hafrm train ARGS` would train with (training itself is replaced)."""
    import hafrm.training.recipe
    from hafrm.errors import HafError

    seen = {}

    def capture(cfg):
        seen["cfg"] = cfg
        raise HafError("captured")

    monkeypatch.setattr(hafrm.training.recipe, "train", capture)
    result = runner.invoke(app, ["train", *args])
    assert result.exit_code == 2 and "captured" in result.output, result.output
    return seen["cfg"]


def _train_command():
    import typer

    return typer.main.get_command(app).commands["train"]


def test_every_config_field_is_a_train_flag_with_its_default_and_group():
    import dataclasses

    from hafrm.config import GROUPS, HafConfig, field_group

    params = {p.name: p for p in _train_command().params}
    fields = dataclasses.fields(HafConfig)
    assert set(params) == {f.name for f in fields} | {"config"}
    for f in fields:
        p = params[f.name]
        assert f"--{f.name.replace('_', '-')}" in p.opts, f.name
        assert p.default is None, f.name  # a flag left out overrides nothing
        assert p.rich_help_panel == GROUPS[field_group(f.name)], f.name
        assert r"\[default: " in p.help, f.name
    assert params["alpha"].help.endswith(r"\[default: 0.2]")
    assert params["data"].help.endswith(r"\[default: builtin]") and params["data"].multiple
    assert params["packing"].secondary_opts == ["--no-packing"]
    assert params["packing"].help.endswith(r"\[default: packing]")
    assert params["resume"].help.endswith(r"\[default: no-resume]")
    assert params["eval_steps"].help.endswith(r"'none' unsets it. \[default: none]")
    help_text = runner.invoke(app, ["train", "--help"]).output
    for title in GROUPS.values():
        assert title in help_text
    assert "--simpo-gamma" in help_text and "[default: 0.2]" in help_text


def test_old_flag_spellings_still_work(monkeypatch):
    args = ["--batch-size", "4", "--format", "trl", "--map", "chosen=a", "--map", "rejected=b", "--no-packing",
            "--pku-safety-filter", "--no-group-by-length", "--resume",
            "--data", "x.jsonl", "--data", "y.jsonl"]  # fmt: skip
    cfg = _config_of(monkeypatch, args)
    assert (cfg.per_device_train_batch_size, cfg.data_format, cfg.data_map) == (4, "trl", ["chosen=a", "rejected=b"])
    assert (cfg.packing, cfg.pku_safety_filter, cfg.group_by_length, cfg.resume) == (False, True, False, True)
    assert cfg.data == ["x.jsonl", "y.jsonl"]
    cfg = _config_of(monkeypatch, ["--per-device-train-batch-size", "3", "--data-format", "hh", "--packing"])
    assert (cfg.per_device_train_batch_size, cfg.data_format, cfg.packing) == (3, "hh", True)


def test_new_flags_reach_the_config(monkeypatch):
    args = ["--simpo-gamma", "0.3", "--use-margin", "--center-rewards-coefficient", "0.01",
            "--system-prompt", "Be brief.", "--weight-decay", "0.1", "--save-total-limit", "3",
            "--max-grad-norm", "0.5", "--warmup-ratio", "0.1",
            "--lr-scheduler-type", "linear", "--per-device-eval-batch-size", "4", "--logging-steps", "2",
            "--logprob-chunk-size", "64", "--logprob-keep-mib", "8", "--pack-length", "256"]  # fmt: skip
    cfg = _config_of(monkeypatch, args)
    assert (cfg.simpo_gamma, cfg.use_margin, cfg.center_rewards_coefficient) == (0.3, True, 0.01)
    assert (cfg.system_prompt, cfg.weight_decay, cfg.save_total_limit, cfg.max_grad_norm) == ("Be brief.", 0.1, 3, 0.5)
    assert (cfg.warmup_ratio, cfg.lr_scheduler_type, cfg.per_device_eval_batch_size) == (0.1, "linear", 4)
    assert (cfg.logging_steps, cfg.logprob_chunk_size, cfg.logprob_keep_mib, cfg.pack_length) == (2, 64, 8, 256)


def test_yaml_values_hold_unless_a_flag_is_given(monkeypatch, tmp_path):
    from hafrm.config import HafConfig

    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text(
        "alpha: 0.4\npacking: false\neval_steps: 5\nreward_head_learning_rate: 0.01\ndata: [a.jsonl]\n"
    )
    cfg = _config_of(monkeypatch, ["--config", str(yaml_file)])
    assert (cfg.alpha, cfg.packing, cfg.eval_steps, cfg.reward_head_learning_rate) == (0.4, False, 5, 0.01)
    assert cfg.data == ["a.jsonl"] and cfg.beta == HafConfig().beta
    args = ["--config", str(yaml_file), "--alpha", "0.1", "--packing", "--eval-steps", "none",
            "--reward-head-learning-rate", "none", "--data", "b.jsonl"]  # fmt: skip
    cfg = _config_of(monkeypatch, args)
    assert (cfg.alpha, cfg.packing, cfg.eval_steps, cfg.reward_head_learning_rate) == (0.1, True, None, None)
    assert cfg.data == ["b.jsonl"]
    assert _config_of(monkeypatch, ["--max-pairs-per-source", "7"]).max_pairs_per_source == 7


def test_a_value_of_the_wrong_type_is_exit_2():
    for args in (["--eval-steps", "often"], ["--alpha", "high"], ["--max-steps", "none"]):
        result = runner.invoke(app, ["train", *args])
        assert result.exit_code == 2, (args, result.output)
        assert "Traceback" not in result.output
