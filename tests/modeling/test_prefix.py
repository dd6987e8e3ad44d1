"""The frozen-prefix cache: the cached path equals the full forward (outputs and gradients, padded
and packed, two architectures); the on-disk set file is written once and reused; the pipeline
checks the cached path before it uses it."""

import logging

import pytest
import torch

from hafrm.config import HafConfig
from hafrm.data.tokenize import PairCollator, PairTokenizer, pair_features
from hafrm.modeling import prefix
from hafrm.modeling.hybrid import HybridRewardModel
from hafrm.objectives.haf import HybridObjective, step_metrics
from helpers import make_pairs, tiny_backbone


def _model(arch, tokenizer, frozen=2):
    model = HybridRewardModel(tiny_backbone(arch, len(tokenizer), seed=3, layers=4))
    torch.nn.init.normal_(model.reward_head.weight, std=0.5)
    model.freeze_bottom(frozen)
    model.train()
    return model


@pytest.mark.parametrize("pack_length", [None, 64])
def test_cached_path_equals_full_forward_and_gradients(arch, pack_length, tokenizer):
    model = _model(arch, tokenizer)
    tok = PairTokenizer(tokenizer, 512, 256).tokenize(make_pairs(5))
    features = pair_features(tok.pairs, torch.randn(len(tok.pairs), 2) - 20.0)
    batch = PairCollator(tokenizer.pad_token_id, pack_length=pack_length)(features)
    objective = HybridObjective(HafConfig())

    def run():
        model.zero_grad()
        out = objective(model, batch)
        out.loss.backward()
        return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    full, g_full = run()
    model.attach_prefix_cache(prefix.PrefixCache(2))
    first, g_first = run()  # every sequence a miss: computed, stored
    assert model.prefix_cache.misses == 10 and model.prefix_cache.hits == 0 and len(model.prefix_cache) == 10
    cached, g_cached = run()  # every sequence a hit
    assert model.prefix_cache.hits == 10
    for out, grads in ((first, g_first), (cached, g_cached)):
        assert torch.allclose(out.loss, full.loss, atol=1e-5)
        for name in ("reward_head/chosen", "logps/chosen", "logps/rejected"):
            assert step_metrics(out)[name] == pytest.approx(step_metrics(full)[name], abs=1e-4), name
        assert grads.keys() == g_full.keys()  # the frozen layers get no gradient either way
        assert not any(".layers.0." in n or ".layers.1." in n for n in grads)
        for name, g in g_full.items():
            assert (grads[name] - g).abs().max() < 1e-4, name
    assert len(model.decoder().layers) == 4  # the layer list is restored after every forward


def test_spans_of_padded_and_packed_batches():
    ids = torch.tensor([[0, 0, 5, 6], [7, 8, 9, 0]])
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 0]])
    assert prefix.spans(ids, mask, None, None) == [(0, 2, 4), (1, 0, 3)]
    seg = torch.tensor([[0, 0, 0, 1, 1], [2, 2, 2, 2, -1]])
    ends = torch.tensor([[0, 2], [0, 4], [1, 3]])
    assert prefix.spans(seg, None, ends, seg) == [(0, 0, 3), (0, 3, 5), (1, 0, 4)]


def test_cache_stops_storing_at_its_limit_and_counts():
    cache = prefix.PrefixCache(1, max_bytes=4 * 8 * 3)  # room for three 8-float states
    for i in range(5):
        cache.put(torch.tensor([i]), torch.zeros(1, 8))
    assert len(cache) == 3 and cache.skipped == 2
    assert cache.get(torch.tensor([0])) is not None and cache.get(torch.tensor([4])) is None


@pytest.mark.parametrize("sharing", [False, True])  # each sequence whole, or a pair's prompt once
def test_fill_writes_the_set_once_and_reloads_it(tokenizer, tmp_path, sharing):
    model = _model("llama", tokenizer)
    model.eval()
    tok = PairTokenizer(tokenizer, 512, 256).tokenize(make_pairs(4))
    seqs = [s for p in tok.pairs for s in (p.chosen_ids, p.rejected_ids)]
    model.attach_prefix_cache(prefix.PrefixCache(2))
    path, hit = prefix.fill(model, tok.pairs, tmp_path, "model-x", tokenizer.pad_token_id, 64, prefix_sharing=sharing)
    assert not hit and path.is_file() and len(model.prefix_cache) == len(set(map(tuple, seqs)))
    # each stored state equals the bottom layers run on that sequence alone
    stored = []
    for s in seqs:
        one = torch.tensor([s])
        alone = prefix.bottom_states(model.decoder(), 2, input_ids=one, position_ids=torch.arange(one.shape[1])[None])
        stored.append(model.prefix_cache.get(one[0]))
        assert torch.allclose(stored[-1], alone[0], atol=1e-5)
    # shared: every pair's prompt is held once (these pairs all share theirs)
    units = prefix.fill_units(tok.pairs, sharing)
    assert len(units) == (len(tok.pairs) if sharing else len(set(map(tuple, seqs))))
    hidden = model.config.hidden_size
    prompts = {tuple(p.chosen_ids[: p.chosen_prompt_len]) for p in tok.pairs}
    assert (
        model.prefix_cache.bytes
        == (sum(len(s) for s in set(map(tuple, seqs))) - sharing * sum(len(p) for p in prompts)) * hidden * 4
    )
    model.attach_prefix_cache(prefix.PrefixCache(2))
    again, hit = prefix.fill(model, tok.pairs, tmp_path, "model-x", tokenizer.pad_token_id, prefix_sharing=sharing)
    assert hit and again == path
    for s, states in zip(seqs, stored, strict=True):
        assert torch.equal(model.prefix_cache.get(torch.tensor(s)), states)
    # another model (or another number of frozen layers, or layout) is another file
    other, hit = prefix.fill(model, tok.pairs, tmp_path, "model-y", tokenizer.pad_token_id, prefix_sharing=sharing)
    assert not hit and other != path
    layout, hit = prefix.fill(model, tok.pairs, tmp_path, "model-x", tokenizer.pad_token_id, prefix_sharing=not sharing)
    assert not hit and layout != path


def test_a_shared_prompt_is_stored_once_and_read_whole_or_after_it():
    cache = prefix.PrefixCache(1)
    prompt = torch.arange(6.0).reshape(3, 2)
    cache.put(torch.tensor([1, 2, 3, 4]), torch.tensor([[9.0, 9.0]]), prompt_states=prompt)
    cache.put(torch.tensor([1, 2, 3, 5, 6]), torch.ones(2, 2), prompt_states=prompt)
    assert len(cache) == 2 and len(cache.prompts) == 1 and cache.bytes == (3 + 1 + 2) * 2 * 4
    assert cache.get(torch.tensor([1, 2, 3, 4])).tolist() == [[0, 1], [2, 3], [4, 5], [9, 9]]
    assert cache.get(torch.tensor([1, 2, 3, 5, 6]), start=3).tolist() == [[1, 1], [1, 1]]
    assert cache.get(torch.tensor([1, 2, 3, 5, 6]), start=2).tolist() == [[4, 5], [1, 1], [1, 1]]
    assert cache.get(torch.tensor([1, 2, 3])) is None  # the prompt alone is not a stored sequence


def test_computing_a_set_shows_its_progress_per_sequence(tokenizer, tmp_path, monkeypatch):
    made = []

    class Bar:  # stands in for tqdm
        def __init__(self, total=None, desc="", disable=None, **kwargs):
            self.total, self.desc, self.disable, self.n = total, desc, disable, 0
            made.append(self)

        def update(self, n=1):
            self.n += n

        def close(self):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.close()

    monkeypatch.setattr(prefix, "tqdm", Bar)
    model = _model("llama", tokenizer)
    tok = PairTokenizer(tokenizer, 512, 256).tokenize(make_pairs(6))
    seqs = [s for p in tok.pairs for s in (p.chosen_ids, p.rejected_ids)]
    model.attach_prefix_cache(prefix.PrefixCache(2))
    prefix.fill(model, tok.pairs, tmp_path, "model-x", tokenizer.pad_token_id, pack_length=64)
    (bar,) = made
    unique = len(set(map(tuple, seqs)))
    assert bar.total == bar.n == unique and "frozen-prefix" in bar.desc and not bar.disable
    prefix.fill(model, tok.pairs, tmp_path, "model-x", tokenizer.pad_token_id, pack_length=64)
    assert len(made) == 1  # read from disk: nothing to show


def test_training_with_the_cache_equals_training_without(tiny_model_dir, tmp_path):
    from hafrm.training.recipe import train

    def run(mib, name):
        cfg = HafConfig(
            model=str(tiny_model_dir),
            freeze_layers=5,
            builtin_pairs=24,
            per_device_train_batch_size=4,
            max_steps=3,
            prefix_cache_mib=mib,
            output_dir=str(tmp_path / name),
            precision="fp32",
        )  # fmt: skip  (bf16 runs the frozen layers in bf16 without the cache)
        return train(cfg, save=False)

    with_cache, without = run(4096, "on"), run(0, "off")
    assert with_cache.metrics["train/prefix_cache/hits"] > 0  # the frozen layers' output was read, not run
    assert "train/prefix_cache/hits" not in without.metrics
    assert with_cache.reward_model.model.prefix_cache is None  # dropped after training: scoring new text runs it all
    for key in ("eval/reward_head/accuracy", "eval/loss", "eval/reward_head/margin", "eval/logps/chosen"):
        assert with_cache.metrics[key] == pytest.approx(without.metrics[key], abs=1e-4), key


def test_pipeline_turns_the_cache_off_when_the_check_fails(tiny_model_dir, tmp_path, monkeypatch, caplog):
    from hafrm.training import recipe as pipeline

    monkeypatch.setattr(pipeline, "check_cached_forward", lambda *a, **k: 0.5)
    cfg = HafConfig(model=str(tiny_model_dir), freeze_layers=5, builtin_pairs=24, per_device_train_batch_size=4,
                    max_steps=1, output_dir=str(tmp_path))  # fmt: skip
    with caplog.at_level(logging.WARNING):
        result = pipeline.train(cfg, save=False)
    assert result.reward_model.model.prefix_cache is None
    assert "frozen-prefix cache off: the cached path differs" in caplog.text


def test_top_layers_keep_their_own_attention_type(tokenizer):
    """Qwen2 with sliding-window attention in its top layers only: the sliced layer list must
    carry the top layers' types, or they would get the bottom layers' full-attention mask."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, use_sliding_window=True, sliding_window=4,
                         max_window_layers=2, pad_token_id=2)  # fmt: skip
    assert config.layer_types == ["full_attention"] * 2 + ["sliding_attention"] * 2
    model = HybridRewardModel(Qwen2ForCausalLM(config).eval())
    model.freeze_bottom(2)
    ids = torch.randint(3, len(tokenizer), (2, 12))
    mask = torch.ones_like(ids)
    assert prefix.check_cached_forward(model, 2, ids, torch.arange(12).expand(2, 12), mask) < 1e-5
    assert config.layer_types[2:] == ["sliding_attention"] * 2 and len(config.layer_types) == 4  # restored


def test_cache_is_refused_for_dropout_and_sharded_weights(tokenizer, monkeypatch):
    from hafrm.training.recipe import prefix_blocker

    model = _model("llama", tokenizer)
    assert prefix_blocker(HafConfig(), model) is None
    # a resume keeps it when the checkpoint's frozen layers match (tests/training/test_checkpoints.py);
    # DDP ranks keep it each (tests/training/test_distributed.py); ZeRO-3 and FSDP shard the frozen layers
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    assert "FSDP shards" in prefix_blocker(HafConfig(), model)
    monkeypatch.delenv("ACCELERATE_USE_FSDP")
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2")
    assert prefix_blocker(HafConfig(), model) is None  # ZeRO-2 keeps whole weights on every rank
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")
    assert "ZeRO-3 shards" in prefix_blocker(HafConfig(), model)
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED")
    model.config.attention_dropout = 0.1
    assert "dropout ({'attention_dropout': 0.1})" in prefix_blocker(HafConfig(), model)
