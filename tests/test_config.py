"""Config validation: bad values fail at start-up, naming what is accepted."""

import dataclasses
import re

import pytest

from hafrm.config import HafConfig, field_group, field_help, read_options
from hafrm.errors import ConfigError


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"mode": "ppo"}, "unknown mode 'ppo'; accepted: hybrid, reward, dpo"),
        ({"loss": "kto"}, "unknown loss 'kto'; accepted: sigmoid, ipo, hinge, simpo, sft"),
        ({"alpha": -0.1}, "alpha must be >= 0"),
        ({"beta": 0.0}, "beta must be > 0"),
        ({"select_by": "vibes"}, "accepted: accuracy, reward, margin, loss, step"),
        ({"precision": "fp8"}, "accepted: auto, fp32, bf16"),
        ({"data": []}, "data is empty"),
    ],
)
def test_bad_values_are_rejected(changes, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        HafConfig(**changes)


def test_mode_weights():
    assert (HafConfig().reward_weight, HafConfig().policy_weight) == (1.0, 0.2)
    assert HafConfig(mode="reward", alpha=0.5).policy_weight == 0.0
    assert (HafConfig(mode="dpo").reward_weight, HafConfig(mode="dpo").policy_weight) == (0.0, 1.0)
    assert HafConfig(mode="dpo").mode_spec.inference_head == "implicit"


def test_yaml_round_trip_and_unknown_field(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("mode: reward\nalpha: 0.0\nlearning_rate: 1.0e-4\ndata: [builtin]\n")
    cfg = HafConfig.from_yaml(good)
    assert cfg.mode == "reward" and cfg.learning_rate == 1e-4
    bad = tmp_path / "bad.yaml"
    bad.write_text("mode: reward\nalpah: 0.3\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown field\(s\) \['alpah'\]"):
        HafConfig.from_yaml(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        HafConfig.from_yaml(tmp_path / "missing.yaml")


def test_every_field_has_help():
    for name in HafConfig.__dataclass_fields__:
        assert field_help(name), name


@pytest.mark.parametrize(("group_by_length", "sampler"), [(True, "group_by_length"), (False, "random")])
def test_group_by_length_picks_the_trainers_sampler(tmp_path, group_by_length, sampler):
    from hafrm.training.recipe import _training_args

    cfg = HafConfig(group_by_length=group_by_length, output_dir=str(tmp_path))
    assert _training_args(cfg, 64).train_sampling_strategy == sampler


def test_fields_are_grouped_by_concern_in_class_order():
    from hafrm.config import GROUPS

    names = [f.name for f in dataclasses.fields(HafConfig)]
    groups = [field_group(n) for n in names]
    assert set(groups) == set(GROUPS)
    assert groups == sorted(groups, key=list(GROUPS).index)  # one section per group, in GROUPS' order
    assert [n for g in GROUPS for n in HafConfig.fields_in(g)] == names
    assert HafConfig.fields_in("loss")[:2] == ("loss", "alpha") and "simpo_gamma" in HafConfig.fields_in("loss")
    cfg = HafConfig(alpha=0.3, data=["a.jsonl"])
    assert cfg.group_dict("loss")["alpha"] == 0.3 and cfg.group_dict("data")["data"] == ["a.jsonl"]
    assert set(cfg.group_dict("speed")) == set(HafConfig.fields_in("speed"))
    with pytest.raises(ConfigError, match="unknown field group 'misc'"):
        HafConfig.fields_in("misc")


def test_fields_and_modes_are_built_by_keyword():
    from hafrm.config import ModeSpec

    with pytest.raises(TypeError):
        HafConfig("smollm2")
    with pytest.raises(TypeError):
        ModeSpec(1.0, True, 0.0, "reward", "positional")
    assert ModeSpec(reward_weight=1.0, uses_alpha=True, policy_weight=0.0, inference_head="reward", help="h")


def test_help_holds_no_measurements():
    for f in dataclasses.fields(HafConfig):
        text = f.metadata["help"].lower()
        assert not re.search(r"faster|slower|measured|seconds|\d\s*(s|ms|min)\b|\d+\.\d+x\b|readme", text), f.name


def test_read_options_is_the_one_check_of_the_source_fields():
    for bad, message in (
        ({"on_error": "ignore"}, "unknown on_error 'ignore'; accepted: raise, skip"),
        ({"data_format": "nope"}, "unknown data_format 'nope'"),
        ({"pku_label": "kinder"}, "unknown pku_label 'kinder'; accepted: safer, better"),
        ({"max_pairs_per_source": 0}, "max_pairs_per_source must be >= 1"),
        ({"data_map": ["chosen"]}, "expected TARGET=FIELD"),
    ):
        with pytest.raises(ConfigError, match=re.escape(message)):
            read_options(**bad)
        with pytest.raises(ConfigError, match=re.escape(message)):
            HafConfig(**bad)
    opts = HafConfig(data_map=["chosen=a", "rejected=b"], max_pairs_per_source=3, seed=7).data_options()
    assert (opts.mapping, opts.max_pairs, opts.seed) == ({"chosen": "a", "rejected": "b"}, 3, 7)
    assert set(HafConfig.fields_in(source=True)) <= set(HafConfig.fields_in("data"))
