"""Config validation: bad values fail at start-up, naming what is accepted."""

import pytest

from hafrm.config import HafConfig, field_help
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
