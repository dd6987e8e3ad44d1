"""LoRA through peft: adapters on the trained layers, the reward head trained in full and saved with
them, scores unchanged by a reload, a merged plain folder, the frozen-prefix cache, an exact resume."""

import copy
import json
import shutil

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

import hafrm
from hafrm.apps.cli import app
from hafrm.config import HafConfig
from hafrm.modeling.backbone import load_backbone
from hafrm.modeling.hybrid import HybridRewardModel
from hafrm.modeling.lora import ADAPTER_CONFIG_FILE, ADAPTER_DIR, ADAPTER_WEIGHTS_FILE
from hafrm.training.reference import model_fingerprint

runner = CliRunner()
TEXTS = (["What is 2+3?", "Name a colour."], ["5", "Blue."])


def _cfg(model_dir, out, **extra):
    values = dict(model=str(model_dir), builtin_pairs=48, per_device_train_batch_size=4, max_steps=6,
                  learning_rate=1e-2, lora_r=4, lora_alpha=8, freeze_layers=4, precision="fp32",
                  select_by="step", output_dir=str(out))  # fmt: skip
    return HafConfig(**{**values, **extra})


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("lora") / "run"
    return hafrm.train(_cfg(tiny_model_dir, out)), out


def test_only_the_adapters_and_the_reward_head_train(trained, tiny_model_dir):
    result, out = trained
    base = load_file(tiny_model_dir / "model.safetensors")
    model = result.reward_model.model
    lora = {n: p for n, p in model.backbone.named_parameters() if ".lora_" in n}
    assert lora and all(p.requires_grad for p in lora.values())
    assert all(".lora_" in n for n, p in model.backbone.named_parameters() if p.requires_grad)
    # no adapter below the frozen layers or on the embeddings / LM head
    assert all(int(n.split("layers.")[1].split(".")[0]) >= 4 for n in lora)
    assert any(p.abs().sum() > 0 for n, p in lora.items() if "lora_B" in n)  # the adapters moved
    for name, p in model.backbone.named_parameters():  # the backbone's own weights did not
        plain = name.replace(".base_layer", "")
        if ".lora_" not in name and plain in base:
            assert torch.equal(p.detach(), base[plain]), name
    # the reward head trained and was saved, in full
    head = load_file(out / "reward_head.safetensors")["weight"]
    assert head.abs().sum() > 0 and torch.equal(head, model.reward_head.weight.detach())


def test_a_reload_scores_the_same(trained):
    result, out = trained
    live = result.reward_model.score_batch(*TEXTS)
    loaded = hafrm.load(out)
    assert loaded.score_batch(*TEXTS) == pytest.approx(live, abs=1e-5)
    assert result.eval_result is not None


def test_the_folder_is_a_merged_plain_model_and_a_peft_adapter(trained, tiny_model_dir):
    result, out = trained
    adapter = out / ADAPTER_DIR
    assert (adapter / ADAPTER_CONFIG_FILE).is_file() and (adapter / ADAPTER_WEIGHTS_FILE).is_file()
    saved = load_file(out / "model.safetensors")
    assert not any("lora_" in k or "base_layer" in k for k in saved)  # plain names: the adapters merged in
    ids = torch.tensor([[1, 5, 9, 14, 3, 7]])
    with torch.no_grad():
        live = result.reward_model.model.backbone(ids).logits
        merged = AutoModelForCausalLM.from_pretrained(out).eval()(ids).logits
        peft = (
            PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), adapter).eval()(ids).logits
        )
    assert torch.allclose(merged, live, atol=1e-5) and torch.allclose(peft, live, atol=1e-5)
    assert not torch.allclose(AutoModelForCausalLM.from_pretrained(tiny_model_dir)(ids).logits, live, atol=1e-4)
    assert json.loads((adapter / ADAPTER_CONFIG_FILE).read_text())["r"] == 4


def test_the_frozen_prefix_cache_serves_the_plain_layers(trained):
    result, _ = trained
    assert result.metrics["train/prefix_cache/hits"] > 0


def test_a_resumed_lora_run_ends_with_the_same_weights(tiny_model_dir, tmp_path):
    """A run stopped after its checkpoint-3 (its folder holding only that) and resumed ends as the
    uninterrupted run: the adapters, the head and the merged backbone, bit for bit."""
    whole = hafrm.train(_cfg(tiny_model_dir, tmp_path / "whole", save_steps=3, eval_steps=3, save_total_limit=5))
    assert whole.metrics["train/steps"] == 6
    shutil.copytree(tmp_path / "whole" / "checkpoint-3", tmp_path / "split" / "checkpoint-3")
    hafrm.train(_cfg(tiny_model_dir, tmp_path / "split", save_steps=3, eval_steps=3, resume=True))
    for name in (f"{ADAPTER_DIR}/{ADAPTER_WEIGHTS_FILE}", "reward_head.safetensors", "model.safetensors"):
        a, b = load_file(tmp_path / "whole" / name), load_file(tmp_path / "split" / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_an_untrained_lora_model_shares_its_base_models_caches(trained, tiny_model_dir, tmp_path):
    """Adapters with B still zero compute the base model: the same fingerprint, so a LoRA run reads
    the reference log-probs a plain run of the same model and data wrote; trained ones do not."""
    plain = HybridRewardModel(load_backbone(str(tiny_model_dir)).model)
    untrained = copy.deepcopy(trained[0].reward_model.model)
    untrained.backbone.config.use_cache = plain.backbone.config.use_cache  # training turned it off
    assert model_fingerprint(untrained) != model_fingerprint(plain)  # the trained adapters
    for name, p in untrained.backbone.named_parameters():
        if ".lora_B" in name:
            p.data.zero_()
    assert model_fingerprint(untrained) == model_fingerprint(plain)
    cache = tmp_path / "cache"
    hafrm.train(_cfg(tiny_model_dir, tmp_path / "plain", lora_r=0, max_steps=1, cache_dir=str(cache)))
    lora = hafrm.train(_cfg(tiny_model_dir, tmp_path / "lora", max_steps=1, cache_dir=str(cache)))
    assert lora.reference_cache_hits == 2  # the training and the held-out sets' references


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--lora-r", "4", "--load-in-4bit"], "load_in_4bit: bitsandbytes quantisation needs a CUDA device"),
        (["--load-in-8bit"], "they need adapters (--lora-r)"),
        (["--lora-r", "4", "--lora-target-modules", "no_such_proj"], "match no linear layer"),
    ],
)
def test_bad_lora_options_are_one_line_exit_2(tiny_model_dir, tmp_path, args, message):
    if torch.cuda.is_available() and "CUDA" in message:
        pytest.skip("this machine has CUDA")
    result = runner.invoke(app, ["train", "--model", str(tiny_model_dir), "--output-dir", str(tmp_path), *args])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


def test_the_seq_cls_export_of_a_lora_model_scores_as_hafrm(trained, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    result, out = trained
    assert runner.invoke(app, ["export", str(out), str(tmp_path / "cls")]).exit_code == 0
    tok = AutoTokenizer.from_pretrained(tmp_path / "cls")
    cls = AutoModelForSequenceClassification.from_pretrained(tmp_path / "cls").eval()
    model = hafrm.load(out)
    chat = [{"role": "user", "content": TEXTS[0][0]}, {"role": "assistant", "content": TEXTS[1][0]}]
    text = tok.apply_chat_template(chat, tokenize=False)
    with torch.no_grad():
        score = cls(**tok(text, return_tensors="pt", add_special_tokens=False)).logits[0, 0].item()
    assert score == pytest.approx(model.score_batch(TEXTS[0][:1], TEXTS[1][:1])[0], abs=1e-4)
