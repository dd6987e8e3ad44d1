"""The export in the tools our users run: TRL's GRPOTrainer, OpenRLHF's loader and its remote-RM
client, RewardBench's own command. Each runs the real package; OpenRLHF and RewardBench pin
other stacks, so they run from their own venvs (`make consumers`) and are skipped without them."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import hafrm
from hafrm.apps.export import export_model

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = Path(__file__).resolve().parents[1] / "consumers"


@pytest.fixture(scope="module")
def seq_cls(tiny_rm_dir, tmp_path_factory):
    return export_model(tiny_rm_dir, "seq-cls", tmp_path_factory.mktemp("export") / "rm").out


def test_trl_grpo_trainer_scores_with_the_export_as_hafrm_does(seq_cls, tiny_rm_dir, tiny_model_dir, tmp_path):
    """A real GRPOTrainer step with the export's path as its reward function (TRL loads it with
    AutoModelForSequenceClassification and reads `.logits[:, 0]`): its rewards equal hafrm's."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    prompts = [[{"role": "user", "content": q}] for q in ("What is 2+2?", "Name a colour.", "Say hi.", "A prime?")]
    args = GRPOConfig(
        output_dir=str(tmp_path / "grpo"),
        num_generations=2,
        max_completion_length=8,
        per_device_train_batch_size=2,
        max_steps=1,
        report_to="none",
        use_vllm=False,
        bf16=False,
        use_cpu=True,
        save_strategy="no",
        seed=0,
    )
    trainer = GRPOTrainer(
        model=str(tiny_model_dir),
        reward_funcs=str(seq_cls),
        args=args,
        train_dataset=Dataset.from_dict({"prompt": prompts}),
    )
    seen = []
    calculate = trainer._calculate_rewards

    def spy(inputs, prompts, completions, completion_ids_list):
        rewards = calculate(inputs, prompts, completions, completion_ids_list)
        seen.append((prompts, completions, rewards[:, 0].detach().cpu()))
        return rewards

    trainer._calculate_rewards = spy
    trainer.train()
    assert seen
    rm = hafrm.load(tiny_rm_dir)
    tok = trainer.reward_processing_classes[0]
    for batch_prompts, completions, trl_rewards in seen:
        texts = [
            tok.apply_chat_template(p + c, tokenize=False) for p, c in zip(batch_prompts, completions, strict=True)
        ]
        ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
        expected = torch.tensor(rm.score_ids(ids, [0] * len(ids), head="reward"))
        assert torch.allclose(trl_rewards, expected, atol=1e-4), (trl_rewards, expected)


def _venv_python(name: str) -> Path:
    if not (ROOT / name / ".installed").is_file():  # written by the Makefile once every install succeeded
        pytest.skip(f"{name} is missing or did not finish installing: `make consumers` builds it")
    return ROOT / name / "bin" / "python"


def _run_script(python: Path, script: str, *args: str, timeout: int = 600) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)
    proc = subprocess.run(
        [str(python), str(SCRIPTS / script), *args], capture_output=True, text=True, timeout=timeout, env=env
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_openrlhf_loads_the_export_and_scores_as_hafrm_does(seq_cls, tiny_rm_dir):
    """OpenRLHF's own `get_llm_for_sequence_regression(path, "reward", value_head_prefix="score")`."""
    python = _venv_python(".venv-openrlhf")
    rm = hafrm.load(tiny_rm_dir)
    pairs = [("What is 2 + 2?", "4"), ("Say hi.", "Hello there, nice to meet you!"), ("Name a colour.", "Red.")]
    rows = [rm.encode(p, r).ids for p, r in pairs]
    request = Path(seq_cls).parent / "openrlhf_request.json"
    request.write_text(json.dumps({"model": str(seq_cls), "input_ids": rows}))
    out = _run_script(python, "openrlhf_score.py", str(request))
    expected = rm.score_ids(rows, [0] * len(rows), head="reward")
    assert out["rewards"] == pytest.approx(expected, abs=1e-4)
    # with reward normalisation on, it applies the export's mean / std (the tiny model's 0.25 and 2)
    assert out["normalized"] == pytest.approx([(x - 0.25) / 2.0 for x in expected], abs=1e-4)
    assert (out["config_mean"], out["config_std"]) == (0.25, 2.0)


def test_openrlhf_remote_client_reads_hafrm_serve(tiny_rm_dir):
    """OpenRLHF's own HTTP client (what `--reward.remote_url` uses) against `hafrm serve`."""
    python = _venv_python(".venv-openrlhf")
    from test_server import _free_port, wait_for_health

    port = _free_port()
    cmd = [sys.executable, "-m", "hafrm.apps.cli", "serve", str(tiny_rm_dir), "--port", str(port)]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_health(f"http://127.0.0.1:{port}", server)  # OpenRLHF's client retries 5 times, 1 s apart
        rm = hafrm.load(tiny_rm_dir)
        prompt = rm.tokenizer.apply_chat_template(
            [{"role": "user", "content": "What is 2 + 2?"}], add_generation_prompt=True, tokenize=False
        )
        query = prompt + "4" + rm.tokenizer.eos_token  # as OpenRLHF decodes a sample stopped at eos
        out = _run_script(python, "openrlhf_remote.py", f"http://127.0.0.1:{port}/get_reward", query, prompt)
    finally:
        server.terminate()
        server.wait(20)
    expected = rm.score("What is 2 + 2?", "4")
    assert out["rewards"] == pytest.approx([expected], abs=1e-5)
    assert out["scores"] == pytest.approx([expected], abs=1e-5)


def test_rewardbench_own_command_agrees_with_hafrm_eval(tokenizer, tiny_model_dir, tmp_path, monkeypatch):
    """RewardBench's `rewardbench` (its own venv, offline) on the export of a model and a local file
    in its format gives the pairs the same scores as `hafrm eval --format rewardbench`."""
    venv = _venv_python(".venv-rewardbench").parents[1]
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from rewardbench_agreement import compare, hafrm_side, run_rewardbench

    from helpers import save_tiny_reward_model

    meta = {"mode": "hybrid", "inference_head": "reward", "base_model": str(tiny_model_dir), "train_config": {}}
    src = save_tiny_reward_model(tmp_path / "rm", tokenizer, meta=meta)
    rows = []
    for subset, (a, b) in {"math-prm": (3, 4), "hep-python": (10, 7), "alpacaeval-easy": (21, 5)}.items():
        for i in range(8):
            x, y = a + i, b * i
            rejected = f"It is {x + y + 1 + i}" + " I think." * (i % 3)
            rows.append({"prompt": f"What is {x} + {y}?", "chosen": f"{x} + {y} = {x + y}.", "rejected": rejected})
            rows[-1] |= {"subset": subset, "id": len(rows) - 1}
    data = tmp_path / "rb.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    export = export_model(src, "seq-cls", tmp_path / "export").out
    report = compare(hafrm_side(src, data), run_rewardbench(export, data, tmp_path / "work", venv))
    assert report["pairs"] == len(rows) and report["hafrm_dropped"] == 0
    assert report["max_abs_score_diff"] < 1e-4
    assert report["verdicts_agree"] == len(rows)
    assert report["rewardbench_accuracy"] == pytest.approx(report["hafrm_accuracy_ties_wrong"])
    assert report["rewardbench_per_subset"] == pytest.approx(report["hafrm_per_subset"])  # no ties here
    assert 0 < report["rewardbench_accuracy"] < 1  # a random head: both right and wrong verdicts compared
