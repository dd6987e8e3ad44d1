"""Safe loading: weights from safetensors only, a model's own code only with --trust-remote-code,
and no pickle in what hafrm writes."""

import json
import os
import pickle
import shutil

import pytest
from typer.testing import CliRunner

from hafrm.apps.cli import app
from hafrm.errors import HafError
from hafrm.evaluation.scoring import RewardModel
from hafrm.modeling.backbone import load_backbone

runner = CliRunner()


class _Payload:
    """Unpickling this runs a shell command: what a hostile pytorch_model.bin can do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _pickle_folder(src, dst, marker):
    """A copy of a model folder whose weights are a pickle with a payload instead of safetensors."""
    shutil.copytree(src, dst)
    for f in dst.glob("model*.safetensors"):
        f.unlink()
    with open(dst / "pytorch_model.bin", "wb") as f:
        pickle.dump({"weights": _Payload(marker)}, f)
    return dst


def test_a_folder_with_pickled_weights_is_refused_and_its_payload_never_runs(tiny_model_dir, tiny_rm_dir, tmp_path):
    marker = tmp_path / "pwned"
    backbone = _pickle_folder(tiny_model_dir, tmp_path / "backbone", marker)
    with pytest.raises(HafError, match=r"pytorch_model\.bin.*safetensors only"):
        load_backbone(str(backbone))
    rm = _pickle_folder(tiny_rm_dir, tmp_path / "rm", marker)
    with pytest.raises(HafError, match=r"pickle files \(pytorch_model\.bin"):
        RewardModel.from_pretrained(rm)
    result = runner.invoke(app, ["train", "--model", str(backbone), "--builtin-pairs", "16",
                                 "--output-dir", str(tmp_path / "out")])  # fmt: skip
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) <= 3 and "pytorch_model.bin" in result.output  # one message (wrapped), no traceback
    assert not marker.exists()


def _custom_code_folder(src, dst, marker, model_type=None):
    """A copy of a model folder whose config points at its own modeling file (which, imported, leaves `marker`)."""
    shutil.copytree(src, dst)
    (dst / "modeling_custom.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n"
        "from transformers import LlamaConfig, LlamaForCausalLM\n\n\nclass CustomConfig(LlamaConfig):\n"
        f"    model_type = {model_type or 'llama'!r}\n\n\nclass CustomForCausalLM(LlamaForCausalLM):\n"
        "    config_class = CustomConfig\n"
    )
    config = json.loads((dst / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "modeling_custom.CustomConfig",
                          "AutoModelForCausalLM": "modeling_custom.CustomForCausalLM"}  # fmt: skip
    if model_type:
        config["model_type"] = model_type
    (dst / "config.json").write_text(json.dumps(config))
    return dst


def test_a_models_own_code_runs_only_with_trust_remote_code(tiny_model_dir, tmp_path):
    """A folder whose config points at its own modeling file: without trust_remote_code the file is
    never imported (a known architecture loads with the library's class; an unknown one is refused,
    naming the flag); with it, the folder's class is used."""
    marker = tmp_path / "imported"
    known = _custom_code_folder(tiny_model_dir, tmp_path / "known", marker)
    assert type(load_backbone(str(known)).model).__name__ == "LlamaForCausalLM"
    unknown = _custom_code_folder(tiny_model_dir, tmp_path / "unknown", marker, model_type="hafrm_test_custom")
    with pytest.raises(HafError, match="--trust-remote-code"):
        load_backbone(str(unknown))
    assert not marker.exists()
    loaded = load_backbone(str(unknown), trust_remote_code=True)
    assert type(loaded.model).__name__ == "CustomForCausalLM" and marker.exists()


def test_a_trained_model_folder_holds_no_pickle(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", "--model", str(tiny_model_dir), "--builtin-pairs", "48", "--max-steps", "2",
                                 "--precision", "fp32", "--save-only-model", "--output-dir", str(out)])  # fmt: skip
    assert result.exit_code == 0, result.output
    written = [p.name for p in out.rglob("*") if p.is_file()]
    assert "training_args.json" in written
    assert json.loads((out / "training_args.json").read_text())["learning_rate"] > 0
    assert not [n for n in written if n.endswith((".bin", ".pkl", ".pickle"))], written


def test_a_model_folder_with_its_own_code_loads_in_every_command_only_with_the_flag(tiny_model_dir, tmp_path):
    """Train on an architecture only the folder's own code defines: every command that loads the
    trained folder (eval, score, export, generate) refuses it, naming --trust-remote-code, and works
    with the flag (that the code is not imported without it: the test above)."""
    marker = tmp_path / "imported"
    custom = _custom_code_folder(tiny_model_dir, tmp_path / "custom", marker, model_type="hafrm_test_custom")
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", "--model", str(custom), "--trust-remote-code", "--builtin-pairs", "32",
                                 "--max-steps", "1", "--precision", "fp32", "--output-dir", str(out)])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (out / "modeling_custom.py").is_file()  # saved with its code, as transformers does
    scores = tmp_path / "in.jsonl"
    scores.write_text(json.dumps({"prompt": "What is 2 + 2?", "response": "4"}) + "\n")
    commands = {
        "eval": ["eval", str(out), "--data", "builtin"],
        "score": ["score", str(out), "--input", str(scores)],
        "export": ["export", str(out), str(tmp_path / "export"), "--to", "causal-lm"],
        "generate": ["generate", str(out), "--prompt", "Hi", "--max-new-tokens", "2"],
    }
    marker.unlink()
    for name, args in commands.items():
        refused = runner.invoke(app, args)
        assert refused.exit_code == 2 and "--trust-remote-code" in refused.output, (name, refused.output)
    for name, args in commands.items():
        allowed = runner.invoke(app, [*args, "--trust-remote-code"])
        assert allowed.exit_code == 0, (name, allowed.output)
    assert marker.exists()
    loaded = RewardModel.from_pretrained(out, trust_remote_code=True)
    assert type(loaded.model.backbone).__name__ == "CustomForCausalLM"
