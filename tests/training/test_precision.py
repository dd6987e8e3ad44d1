"""Precision is chosen by measurement, not assumed."""

import pytest

import hafrm.training.precision as precision


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


def test_bf16_autocasts_training_steps_and_their_reference_not_evaluation(tiny_model_dir, tmp_path, monkeypatch):
    import torch

    from hafrm.config import HafConfig
    from hafrm.objectives.haf import HybridObjective
    from hafrm.training.recipe import train

    seen: list[tuple[bool, bool]] = []  # (model.training, autocast on) at every objective call
    original = HybridObjective.__call__

    def spy(self, model, batch, *args, **kwargs):
        seen.append((model.training, torch.is_autocast_enabled("cpu")))
        return original(self, model, batch, *args, **kwargs)

    monkeypatch.setattr(HybridObjective, "__call__", spy)
    import hafrm.training.recipe

    refs: list[bool] = []  # autocast on, per reference pass (train first, then eval)
    original_ref = hafrm.training.recipe.reference_logps

    def ref_spy(*args, **kwargs):
        refs.append(torch.is_autocast_enabled("cpu"))
        return original_ref(*args, **kwargs)

    monkeypatch.setattr(hafrm.training.recipe, "reference_logps", ref_spy)
    fills: list[tuple[int, bool]] = []  # (pairs, autocast on) per frozen-prefix set filled
    original_fill = hafrm.training.recipe.fill

    def fill_spy(model, pairs, *args, **kwargs):
        fills.append((len(pairs), torch.is_autocast_enabled("cpu")))
        return original_fill(model, pairs, *args, **kwargs)

    monkeypatch.setattr(hafrm.training.recipe, "fill", fill_spy)
    cfg = HafConfig(model=str(tiny_model_dir), freeze_layers=2, builtin_pairs=24, per_device_train_batch_size=4,
                    max_steps=2, output_dir=str(tmp_path / "m"), precision="bf16",
                    cache_dir=str(tmp_path / "c"))  # fmt: skip
    assert train(cfg).precision == "bf16"
    steps = [autocast for training, autocast in seen if training]
    evals = [autocast for training, autocast in seen if not training]
    assert len(steps) == 2 and all(steps)
    assert evals and not any(evals)
    assert refs == [True, False]  # the training side at the steps' precision, the eval side in fp32
    # the frozen layers' states: the eval set's first, in fp32; then the training set's, as a bf16 step computes them
    (n_eval, eval_autocast), (n_train, train_autocast) = fills
    assert not eval_autocast and train_autocast and n_train > n_eval


@pytest.mark.parametrize("prefix_cache_mib", [64, 0])  # frozen-prefix cache on, off
def test_bf16_policy_starts_equal_to_its_training_reference(tiny_model_dir, tmp_path, monkeypatch, prefix_cache_mib):
    import torch

    from hafrm.config import HafConfig
    from hafrm.objectives.haf import HybridObjective
    from hafrm.training.recipe import train
    from hafrm.training.reference import compute_logps

    gaps: list[float] = []  # |policy - reference| summed log-probs, at the first training step
    fp32_gaps: list[float] = []  # the same against the reference an fp32 pass gives
    original = HybridObjective.__call__

    def spy(self, model, batch, *args, **kwargs):
        step = original(self, model, batch, *args, **kwargs)
        if model.training and not gaps:
            policy = torch.cat([step.scores.logps_chosen, step.scores.logps_rejected])
            gaps.append((policy - torch.cat([batch["ref_chosen"], batch["ref_rejected"]])).abs().max().item())
            features = [p for p in tokenized if p.index in set(batch["index"].tolist())]
            with torch.autocast("cpu", enabled=False):
                fp32 = compute_logps(model, sorted(features, key=lambda p: batch["index"].tolist().index(p.index)), 2)
            fp32_gaps.append((policy - torch.cat([fp32[:, 0], fp32[:, 1]])).abs().max().item())
        return step

    tokenized = []
    import hafrm.training.recipe

    original_tokenize = hafrm.training.recipe.PairTokenizer.tokenize

    def keep(self, pairs):
        result = original_tokenize(self, pairs)
        if not tokenized:
            tokenized.extend(result.pairs)  # the training side is tokenised first
        return result

    monkeypatch.setattr(hafrm.training.recipe.PairTokenizer, "tokenize", keep)
    monkeypatch.setattr(HybridObjective, "__call__", spy)
    cfg = HafConfig(model=str(tiny_model_dir), freeze_layers=4, builtin_pairs=24, per_device_train_batch_size=4,
                    max_steps=1, output_dir=str(tmp_path / "m"), precision="bf16", prefix_cache_mib=prefix_cache_mib,
                    learning_rate=0.0, reward_head_learning_rate=0.0)  # fmt: skip
    train(cfg)
    assert gaps[0] < 0.5 * fp32_gaps[0], (gaps, fp32_gaps)  # closer to its own reference than to fp32's (13x, 4x here)
