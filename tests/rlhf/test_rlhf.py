"""`hafrm rlhf` and `hafrm generate`: TRL's GRPO / RLOO against a hafrm reward model end to end on
tiny random models, the reward callable's formatting, the prompt split, the gold verdicts and
the verdict worked by hand, a run against a server, and the user errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

import hafrm
from hafrm.apps.cli import app
from hafrm.config import HafConfig
from hafrm.data.io import split_by_prompt
from hafrm.data.sources import builtin_pairs
from hafrm.errors import ConfigError, DataError
from hafrm.rlhf.config import RLHFConfig
from hafrm.rlhf.gold import RLPrompt, builtin_prompt_split, file_prompt_split, gold_verdicts
from hafrm.rlhf.rewards import HafrmReward, RemoteReward, completion_text
from hafrm.rlhf.run import compare_rlhf, paired_change, run_rlhf, verdict
from helpers import save_tiny_reward_model, tiny_backbone

POLICY_TEMPLATE = (  # another template than the reward model's (SmolLM2's <|im_start|> one)
    "{% for m in messages %}### {{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}### assistant: {% endif %}"
)


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory, tokenizer):
    """A tiny random Llama whose tokenizer formats chats unlike the reward model's."""
    path = tmp_path_factory.mktemp("policy")
    tiny_backbone("llama", len(tokenizer), seed=3).save_pretrained(path)
    tok = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    tok.chat_template = POLICY_TEMPLATE
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def builtin_rm_dir(tmp_path_factory, tokenizer):
    """A tiny reward model whose card says it was trained on the built-in task (seed 5, 200 pairs)."""
    train_config = {"data": ["builtin"], "builtin_pairs": 200, "seed": 5, "eval_fraction": 0.2}
    meta = {"mode": "hybrid", "inference_head": "reward", "beta": 0.1, "train_config": train_config,
            "reward_stats": {"reward": {"mean": 0.5, "std": 2.0, "n": 10, "data": "made up"}}}  # fmt: skip
    return save_tiny_reward_model(tmp_path_factory.mktemp("builtin-rm"), tokenizer, meta=meta)


def _cfg(policy_dir, out, **kw) -> RLHFConfig:
    values = dict(policy=str(policy_dir), eval_prompts=6, max_steps=2, eval_steps=1, num_generations=2,
                  per_device_train_batch_size=4, max_new_tokens=4, output_dir=str(out), save_policy=False)  # fmt: skip
    return RLHFConfig(**(values | kw))


def test_reward_callable_formats_with_the_reward_models_template(tiny_rm_dir, monkeypatch):
    rm = hafrm.load(tiny_rm_dir)
    reward = HafrmReward(rm, name="hybrid")
    prompts = [[{"role": "user", "content": "What is 2 + 2?"}], [{"role": "user", "content": "Say hi."}]]
    completions = [[{"role": "assistant", "content": "4"}], [{"role": "assistant", "content": "hi there"}]]
    seen = []
    encode = rm.encode
    monkeypatch.setattr(rm, "encode", lambda p, r: seen.append(rm.tokenizer.decode(encode(p, r).ids)) or encode(p, r))
    scores = reward(prompts, completions, completion_ids=None, trainer_state=None)
    assert seen[0].startswith("<|im_start|>") and "<|im_start|>assistant\n4<|im_end|>" in seen[0]
    assert "###" not in "".join(seen)
    stats = rm.stats("reward")  # the tiny model stores mean 0.25, std 2: scores are normalised by them
    raw = [rm.score(p, completion_text(c)) for p, c in zip(prompts, completions, strict=True)]
    assert scores == pytest.approx([(r - stats["mean"]) / stats["std"] for r in raw], abs=1e-6)
    assert reward.__name__ == "hybrid"


def test_gold_verdicts_by_hand():
    arithmetic = {"kind": "arithmetic", "answer": 43}
    facts = {"kind": "facts", "relation": "language", "answer": "Italian", "aliases": []}
    prompts = [RLPrompt([], "arithmetic", arithmetic), RLPrompt([], "arithmetic", arithmetic),
               RLPrompt([], "facts", facts), RLPrompt([])]  # fmt: skip
    got = gold_verdicts(prompts, ["The answer is 43.", "It is 42.", "italian", "anything"])
    assert got.correct == [True, False, True, None]
    assert got.rate == pytest.approx(2 / 3)
    assert got.per_skill == {"arithmetic": 0.5, "facts": 1.0}


def test_paired_change_and_verdict_by_hand():
    change = paired_change([0, 0, 1, 1], [1, 1, 1, 1])
    assert change["delta"] == pytest.approx(0.5) and change["n"] == 4
    lo, hi = change["ci95"]  # resamples of (1, 1, 0, 0): means in [0, 1]
    assert 0 <= lo <= 0.5 <= hi <= 1
    up, flat, down = {"ci95": [0.1, 0.3]}, {"ci95": [-0.1, 0.2]}, {"ci95": [-0.3, -0.1]}
    assert verdict(up, up) == "aligned"
    assert verdict(up, down) == "hacking"
    assert verdict(up, flat) == "reward_only"
    assert verdict(up, None) == "reward_only"
    assert verdict(flat, up) == "reward_flat"
    assert verdict(down, up) == "reward_fell"


def test_builtin_prompts_leave_out_the_reward_models_training_prompts(builtin_rm_dir):
    split = builtin_prompt_split([str(builtin_rm_dir)], n_eval=10, max_train=None)
    cfg = HafConfig(builtin_pairs=200, seed=5)
    pairs = builtin_pairs(cfg)
    trained = {json.dumps(p.prompt, sort_keys=True) for p in split_by_prompt(pairs, 0.2, 5)[0]}
    used = [json.dumps(p.messages, sort_keys=True) for p in split.eval + split.train]
    assert not trained & set(used)
    assert len(used) == len(set(used)) == len(pairs) - len(trained)
    assert split.excluded == len(trained) > 0
    assert len(split.eval) == 10 and all(p.spec is not None for p in split.eval)
    assert {p.skill for p in split.eval} == {"arithmetic", "facts", "format"}


def test_prompts_file_errors_name_file_line_and_field(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"prompt": "a"}\n{"prompt": "b"}\n{"prompt": [{"role": "user", "content": "c"}]}\n')
    split = file_prompt_split(path, n_eval=1, max_train=None)
    assert [p.messages[0]["content"] for p in split.eval + split.train] == ["a", "b", "c"]
    path.write_text('{"prompt": "a"}\n{"text": "b"}\n')
    with pytest.raises(DataError, match=r"prompts.jsonl:2: field 'prompt'"):
        file_prompt_split(path, n_eval=1, max_train=None)


def test_config_errors():
    with pytest.raises(ConfigError, match="one of --reward-model"):
        RLHFConfig()
    with pytest.raises(ConfigError, match="multiple of num_generations"):
        RLHFConfig(reward_model=["x"], per_device_train_batch_size=6, num_generations=4)
    with pytest.raises(ConfigError, match="the name 'a' is taken by x"):
        RLHFConfig(reward_model=["a=x", "a=y"])
    with pytest.raises(ConfigError, match="need a NAME=DIR each"):
        RLHFConfig(reward_model=["x", "b=y"])
    with pytest.raises(ConfigError, match="unknown trainer"):
        RLHFConfig(reward_model=["x"], trainer="ppo")


@pytest.mark.parametrize("trainer", ["grpo", "rloo"])
def test_rlhf_runs_end_to_end_and_writes_both_curves(trainer, policy_dir, builtin_rm_dir, tmp_path):
    result = run_rlhf(_cfg(policy_dir, tmp_path / "out", reward_model=[str(builtin_rm_dir)], trainer=trainer))
    record = json.loads((tmp_path / "out" / "rlhf.json").read_text())
    assert [p["step"] for p in record["points"]] == [0, 1, 2]
    assert (tmp_path / "out" / "rlhf.png").stat().st_size > 0
    rm = hafrm.load(builtin_rm_dir)
    eval_prompts = record["eval_prompts"]
    for point in record["points"]:  # each point's numbers are the reward model's and the verifiers'
        expected = rm.score_batch(eval_prompts, point["answers"], normalize=True)
        assert point["rewards"] == pytest.approx(expected, abs=1e-5)
        assert point["reward"] == pytest.approx(sum(expected) / len(expected), abs=1e-5)
        judged = [c for c in point["correct"] if c is not None]
        assert point["gold"] == pytest.approx(sum(judged) / len(judged))
    assert record["points"][1]["train_reward"] is not None and record["points"][2]["kl"] is not None
    assert record["summary"]["verdict"] == verdict(record["summary"]["reward_change"], record["summary"]["gold_change"])
    assert record["prompts"]["excluded_as_reward_model_training"] > 0
    assert result.seconds_per_step > 0


def test_compare_runs_the_same_prompts_against_each_reward_model(policy_dir, builtin_rm_dir, tiny_rm_dir, tmp_path):
    cfg = _cfg(policy_dir, tmp_path, reward_model=[f"a={builtin_rm_dir}", f"b={tiny_rm_dir}"], max_steps=1)
    record = compare_rlhf(cfg)
    runs = {n: json.loads((tmp_path / n / "rlhf.json").read_text()) for n in ("a", "b")}
    assert runs["a"]["eval_prompts"] == runs["b"]["eval_prompts"]
    assert runs["a"]["points"][0]["answers"] == runs["b"]["points"][0]["answers"]  # the same policy at step 0
    assert set(record["runs"]) == {"a", "b"} and "a - b" in record["final_gold_differences"]
    assert (tmp_path / "comparison.png").is_file()


@pytest.mark.parametrize("protocol", ["hafrm", "openrlhf"])
def test_remote_reward_scores_as_the_local_model_does(protocol, tiny_rm_dir, policy_dir):
    from test_server import _free_port, wait_for_health
    from transformers import AutoTokenizer

    port = _free_port()
    cmd = [sys.executable, "-m", "hafrm.apps.cli", "serve", str(tiny_rm_dir), "--port", str(port)]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_health(f"http://127.0.0.1:{port}", server)
        # the policy formats OpenRLHF's texts with SmolLM2's template, which the server parses back
        tok = AutoTokenizer.from_pretrained(tiny_rm_dir) if protocol == "openrlhf" else None
        remote = RemoteReward(f"http://127.0.0.1:{port}", protocol, tok)
        prompts = [[{"role": "user", "content": "What is 2 + 2?"}], [{"role": "user", "content": "Say hi."}]]
        got = remote(prompts, [[{"role": "assistant", "content": "4"}], "hello"])
    finally:
        server.terminate()
        server.wait(20)
    rm = hafrm.load(tiny_rm_dir)
    assert got == pytest.approx([rm.score(prompts[0], "4"), rm.score(prompts[1], "hello")], abs=1e-5)


def test_cli_rlhf_and_generate(policy_dir, builtin_rm_dir, tmp_path):
    runner = CliRunner()
    config = tmp_path / "rlhf.yaml"  # a config without the reward model, which the flag gives
    config.write_text(f"policy: {policy_dir}\neval_prompts: 4\nmax_steps: 1\nnum_generations: 2\n")
    args = ["rlhf", "--config", str(config), "--reward-model", str(builtin_rm_dir), "--per-device-train-batch-size",
            "2", "--max-new-tokens", "3", "--no-save-policy", "--output-dir", str(tmp_path / "r")]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "gold" in result.output and (tmp_path / "r" / "rlhf.json").is_file()
    bad = runner.invoke(app, ["rlhf", "--policy", str(policy_dir)])
    assert bad.exit_code == 2 and "one of --reward-model" in bad.output
    out = tmp_path / "g.json"
    gen = runner.invoke(app, ["generate", f"base={policy_dir}", str(builtin_rm_dir), "--gold", "--num-prompts", "5",
                              "--max-new-tokens", "3", "--prompt", "Hi", "--out", str(out)])  # fmt: skip
    assert gen.exit_code == 0, gen.output
    report = json.loads(out.read_text())
    assert set(report["gold"]["models"]) == {"base", str(builtin_rm_dir)}  # NAME=DIR, or the folder as given
    assert report["gold"]["prompts"] == 5 and len(report["samples"]["base"]) == 1
    models = report["gold"]["models"]
    difference = report["gold"]["differences"][f"{builtin_rm_dir} - base"]
    verdicts = zip(models["base"]["correct"], models[str(builtin_rm_dir)]["correct"], strict=True)
    judged = [(a, b) for a, b in verdicts if a is not None]
    assert difference["n"] == len(judged) == 5
    assert difference["delta"] == pytest.approx(sum(b - a for a, b in judged) / 5)
    assert f"gold, {builtin_rm_dir} - base" in gen.output
    twice = runner.invoke(app, ["generate", f"a={policy_dir}", f"a={builtin_rm_dir}", "--gold"])
    assert twice.exit_code == 2 and "the name 'a' is taken" in twice.output


def test_a_seq_cls_export_scores_as_trl_reads_it(tiny_rm_dir, tmp_path):
    from hafrm.apps.export import export_model
    from hafrm.rlhf.rewards import SeqClsReward, reward_function

    reward = reward_function("export", str(export_model(tiny_rm_dir, "seq-cls", tmp_path / "rm").out))
    assert isinstance(reward, SeqClsReward)
    prompts = [[{"role": "user", "content": "What is 2 + 2?"}], [{"role": "user", "content": "Say hi."}]]
    completions = [[{"role": "assistant", "content": "4"}], [{"role": "assistant", "content": "hello there"}]]
    rm = hafrm.load(tiny_rm_dir)
    texts = [rm.tokenizer.apply_chat_template(p + c, tokenize=False) for p, c in zip(prompts, completions, strict=True)]
    ids = [rm.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    assert reward(prompts, completions) == pytest.approx(rm.score_ids(ids, [0] * len(ids), head="reward"), abs=1e-4)
