"""`hafrm export`: the folders load with transformers alone and score exactly as hafrm does."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
from typer.testing import CliRunner

import hafrm
from hafrm.apps.cli import app
from hafrm.apps.export import PAD_TOKEN, export_model
from helpers import make_pairs, save_tiny_reward_model

runner = CliRunner()


def _conversations(n=6):
    pairs = make_pairs(n)
    return [p.prompt for p in pairs], [p.chosen if i % 2 else p.rejected * (1 + i) for i, p in enumerate(pairs)]


def _seq_cls_scores(folder, ids_rows, side):
    """The export scored with transformers only: padded by its own tokenizer, the score at `.logits[:, 0]`."""
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    tok.padding_side = side
    batch = tok.pad({"input_ids": ids_rows}, return_tensors="pt")
    with torch.no_grad():
        return model(**batch).logits[:, 0]


@pytest.mark.parametrize("side", ["right", "left"])
def test_seq_cls_export_scores_equal_hafrm_on_chat_texts(arch, tokenizer, tmp_path, side):
    src = save_tiny_reward_model(tmp_path / "rm", tokenizer, arch)
    result = export_model(src, "seq-cls", tmp_path / "out")
    rm = hafrm.load(src)
    prompts, responses = _conversations()
    expected = torch.tensor(rm.score_batch(prompts, responses))
    # the texts as TRL's trainers build them: the export's own chat template, no special tokens added
    tok = AutoTokenizer.from_pretrained(result.out)
    texts = [
        tok.apply_chat_template([*p, {"role": "assistant", "content": r}], tokenize=False)
        for p, r in zip(prompts, responses, strict=True)
    ]
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    assert ids == [rm.encode(p, r).ids for p, r in zip(prompts, responses, strict=True)]
    assert len({len(i) for i in ids}) > 2  # really batched with other lengths
    got = _seq_cls_scores(result.out, ids, side)
    assert torch.allclose(got, expected, atol=1e-4), (got, expected)
    assert expected.std() > 0.01


def test_texts_ending_with_the_pad_token_score_at_that_token(tokenizer, tmp_path):
    """SmolLM2's pad == eos: a text that ends with eos (hafrm's plain format) must be scored there,
    not at the token before, which is where transformers reads a pad-id token's row."""
    assert tokenizer.pad_token_id == tokenizer.eos_token_id
    plain = AutoTokenizer.from_pretrained(tokenizer.name_or_path)
    plain.chat_template = None  # the plain format: prompt lines, response, then eos
    src = save_tiny_reward_model(tmp_path / "rm", plain)
    result = export_model(src, "seq-cls", tmp_path / "out")
    assert result.pad_token_added and result.pad_token == PAD_TOKEN
    cfg = json.loads((result.out / "config.json").read_text())
    assert cfg["pad_token_id"] == AutoTokenizer.from_pretrained(result.out).pad_token_id != tokenizer.eos_token_id
    rm = hafrm.load(src)
    prompts, responses = _conversations()
    ids = [rm.encode(p, r).ids for p, r in zip(prompts, responses, strict=True)]
    assert all(row[-1] == tokenizer.eos_token_id for row in ids)
    expected = torch.tensor(rm.score_batch(prompts, responses))
    for side in ("right", "left"):
        assert torch.allclose(_seq_cls_scores(result.out, ids, side), expected, atol=1e-4)
    # a naive export that kept pad == eos reads the wrong token: the case this guards against
    naive = AutoModelForSequenceClassification.from_pretrained(result.out, pad_token_id=tokenizer.eos_token_id).eval()
    batch = AutoTokenizer.from_pretrained(result.out).pad({"input_ids": ids}, return_tensors="pt")
    with torch.no_grad():
        wrong = naive(**batch).logits[:, 0]
    assert not torch.allclose(wrong, expected, atol=1e-3)


def test_seq_cls_export_carries_normalisation_stats_and_legacy_keys(tiny_rm_dir, tmp_path):
    result = export_model(tiny_rm_dir, "seq-cls", tmp_path / "out")
    cfg = json.loads((result.out / "config.json").read_text())
    assert (cfg["mean"], cfg["std"]) == (0.25, 2.0)  # OpenRLHF's names, from the model folder
    assert cfg["id2label"] == {"0": "LABEL_0"}  # num_labels 1
    assert cfg["architectures"] == ["LlamaForSequenceClassification"]
    assert cfg["rope_theta"] == cfg["rope_parameters"]["rope_theta"]  # transformers 4.x reads this one
    assert cfg["torch_dtype"] == "float32"
    tok_cfg = json.loads((result.out / "tokenizer_config.json").read_text())
    assert tok_cfg["chat_template"] == (result.out / "chat_template.jinja").read_text()
    assert tok_cfg["tokenizer_class"] != "TokenizersBackend"  # a class transformers 4.x has
    assert tok_cfg["model_input_names"] == ["input_ids", "attention_mask"]  # no token_type_ids from 4.x
    assert not (result.out / "reward_head.safetensors").exists()
    from safetensors.torch import load_file

    weights = load_file(str(result.out / "model.safetensors"))
    head = load_file(str(tiny_rm_dir / "reward_head.safetensors"))["weight"]
    assert torch.equal(weights["score.weight"], head)
    assert all(k == "score.weight" or k.startswith("model.") for k in weights)


def test_a_legacy_head_bias_is_stored_as_an_offset(tokenizer, tmp_path):
    head = torch.nn.Linear(32, 1)
    torch.nn.init.normal_(head.weight, std=0.5)
    head.bias.data.fill_(0.75)
    meta = {"mode": "hybrid", "inference_head": "reward", "reward_stats": {"reward": {"mean": 1.0, "std": 3.0}}}
    src = save_tiny_reward_model(tmp_path / "rm", tokenizer, meta=meta, head=head)
    result = export_model(src, "seq-cls", tmp_path / "out")
    assert result.score_offset == 0.75
    cfg = json.loads((result.out / "config.json").read_text())
    assert cfg["hafrm_export"]["score_offset"] == 0.75
    assert cfg["mean"] == 0.25  # the export's own scores' mean: normalised scores stay equal
    rm = hafrm.load(src)
    prompts, responses = _conversations(3)
    ids = [rm.encode(p, r).ids for p, r in zip(prompts, responses, strict=True)]
    got = _seq_cls_scores(result.out, ids, "right") + 0.75
    assert torch.allclose(got, torch.tensor(rm.score_batch(prompts, responses)), atol=1e-4)


def test_causal_lm_export_is_the_policy_head(tiny_rm_dir, tmp_path):
    result = export_model(tiny_rm_dir, "causal-lm", tmp_path / "policy")
    assert not (result.out / "reward_head.safetensors").exists()
    assert not (result.out / "hafrm_config.json").exists()
    plain = AutoModelForCausalLM.from_pretrained(result.out).eval()
    tok = AutoTokenizer.from_pretrained(result.out)
    rm = hafrm.load(tiny_rm_dir)
    ids = torch.tensor([rm.encode("What is 1 + 1?", "2").ids])
    with torch.no_grad():
        assert torch.allclose(plain(ids).logits, rm.model.backbone(ids).logits, atol=1e-5)
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "Hi"}], add_generation_prompt=True, return_tensors="pt"
    )
    prompt_ids = prompt["input_ids"] if hasattr(prompt, "keys") else prompt
    generated = plain.generate(prompt_ids, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
    assert generated.shape[1] > prompt_ids.shape[1]


def test_export_cli_errors_are_one_line(tiny_rm_dir, tokenizer, tmp_path):
    out = tmp_path / "x"
    assert runner.invoke(app, ["export", str(tiny_rm_dir), str(out)]).exit_code == 0
    again = runner.invoke(app, ["export", str(tiny_rm_dir), str(out)])
    assert again.exit_code == 2 and "exists and is not empty" in again.output
    assert runner.invoke(app, ["export", str(tiny_rm_dir), str(out), "--overwrite"]).exit_code == 0
    bad = runner.invoke(app, ["export", str(tiny_rm_dir), str(tmp_path / "y"), "--to", "onnx"])
    assert bad.exit_code == 2 and "unknown export target 'onnx'" in bad.output
    dpo = save_tiny_reward_model(tmp_path / "dpo", tokenizer, meta={"mode": "dpo", "inference_head": "implicit"})
    refused = runner.invoke(app, ["export", str(dpo), str(tmp_path / "z")])
    assert refused.exit_code == 2 and "export --to causal-lm instead" in refused.output
    assert not (tmp_path / "z").exists()
    missing = runner.invoke(app, ["export", str(tmp_path / "nope"), str(tmp_path / "w")])
    assert missing.exit_code == 2 and "is not a hafrm model folder" in missing.output


def test_export_never_destroys_the_model_or_its_parents(tiny_rm_dir, tmp_path, monkeypatch):
    before = sorted(p.name for p in tiny_rm_dir.iterdir())
    for out in (tiny_rm_dir, tiny_rm_dir.parent, tiny_rm_dir / ".."):
        r = runner.invoke(app, ["export", str(tiny_rm_dir), str(out), "--overwrite"])
        assert r.exit_code == 2 and "holds the model folder" in r.output, r.output
    monkeypatch.chdir(tmp_path)
    r = runner.invoke(app, ["export", str(tiny_rm_dir), ".", "--overwrite"])
    assert r.exit_code == 2 and "holds the working folder" in r.output
    (tmp_path / "file").write_text("x")
    r = runner.invoke(app, ["export", str(tiny_rm_dir), str(tmp_path / "file"), "--overwrite"])
    assert r.exit_code == 2 and "is not a folder" in r.output
    assert sorted(p.name for p in tiny_rm_dir.iterdir()) == before
    inside = runner.invoke(app, ["export", str(tiny_rm_dir), str(tiny_rm_dir / "seqcls")])  # a subfolder is fine
    assert inside.exit_code == 0, inside.output
    assert hafrm.load(tiny_rm_dir).score("a", "b") == pytest.approx(hafrm.load(tiny_rm_dir).score("a", "b"))
