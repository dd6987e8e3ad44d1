"""Reference log-probs: cached on disk, keyed by model and data."""

import torch

from hafrm.data.tokenize import PairTokenizer
from hafrm.modeling.hybrid import HybridRewardModel
from hafrm.training.reference import compute_logps, reference_logps
from helpers import make_pairs, tiny_backbone


def _setup(tokenizer, n=4, seed=0):
    model = HybridRewardModel(tiny_backbone("llama", len(tokenizer), seed=seed))
    pairs = PairTokenizer(tokenizer, 512, 256).tokenize(make_pairs(n)).pairs
    return model, pairs


def test_miss_then_hit_returns_the_same_values(tokenizer, tmp_path):
    model, pairs = _setup(tokenizer)
    first = reference_logps(model, pairs, tmp_path, tokenizer.pad_token_id)
    second = reference_logps(model, pairs, tmp_path, tokenizer.pad_token_id)
    assert not first.hit and second.hit and first.path == second.path
    assert torch.equal(first.logps, second.logps)
    assert torch.allclose(first.logps, compute_logps(model, pairs, tokenizer.pad_token_id), atol=1e-6)
    assert first.logps.shape == (4, 2) and (first.logps < 0).all()


def test_other_data_or_model_misses(tokenizer, tmp_path):
    model, pairs = _setup(tokenizer)
    base = reference_logps(model, pairs, tmp_path, tokenizer.pad_token_id)
    other_data = reference_logps(model, pairs[:3], tmp_path, tokenizer.pad_token_id)
    other_model, _ = _setup(tokenizer, seed=1)
    other_weights = reference_logps(other_model, pairs, tmp_path, tokenizer.pad_token_id)
    assert not other_data.hit and not other_weights.hit
    assert len({base.path, other_data.path, other_weights.path}) == 3


def test_weights_changed_in_place_miss(tokenizer, tmp_path):
    model, pairs = _setup(tokenizer)
    base = reference_logps(model, pairs, tmp_path, tokenizer.pad_token_id)
    with torch.no_grad():
        model.backbone.model.layers[0].mlp.up_proj.weight[0, 0] += 1.0
    again = reference_logps(model, pairs, tmp_path, tokenizer.pad_token_id)
    assert not again.hit and again.path != base.path


def test_batching_does_not_change_values(tokenizer):
    model, pairs = _setup(tokenizer, n=6)
    one = compute_logps(model, pairs, tokenizer.pad_token_id, batch_size=1)
    many = compute_logps(model, pairs, tokenizer.pad_token_id, batch_size=4)
    assert torch.allclose(one, many, atol=1e-5)


def test_packed_pass_equals_padded(tokenizer, tmp_path):
    model, pairs = _setup(tokenizer, n=6)
    padded = compute_logps(model, pairs, tokenizer.pad_token_id, batch_size=4)
    for pack_length in (64, 4096):  # several rows per batch, and one row per batch
        packed = compute_logps(model, pairs, tokenizer.pad_token_id, batch_size=4, pack_length=pack_length)
        assert (packed - padded).abs().max() < 1e-4, pack_length
    cached = reference_logps(model, pairs, tmp_path, tokenizer.pad_token_id, 4, pack_length=64)
    assert (cached.logps - padded).abs().max() < 1e-4


class _Bar:
    """Stands in for tqdm: records what a progress bar was told."""

    made: list["_Bar"] = []

    def __init__(self, total=None, desc="", disable=None, **kwargs):
        self.total, self.desc, self.disable, self.n, self.closed = total, desc, disable, 0, False
        _Bar.made.append(self)

    def update(self, n=1):
        self.n += n

    def close(self):
        self.closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def test_the_reference_pass_shows_its_progress_per_pair(tokenizer, monkeypatch):
    import hafrm.training.reference

    monkeypatch.setattr(hafrm.training.reference, "tqdm", _Bar)
    _Bar.made = []
    model, pairs = _setup(tokenizer, n=5)
    compute_logps(model, pairs, tokenizer.pad_token_id, batch_size=2)
    (bar,) = _Bar.made
    assert bar.desc == "reference log-probs" and bar.total == bar.n == 5 and bar.closed
    assert not bar.disable  # shown in a log file too, as the Trainer's bars are
