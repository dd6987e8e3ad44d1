"""Save -> load gives the same scores; the folder also loads as a plain causal LM."""

import pytest
import torch
from transformers import AutoModelForCausalLM

import hafrm
from hafrm.modeling.hybrid import HybridRewardModel
from helpers import make_pairs, tiny_backbone


def test_save_load_identical_scores(tokenizer, tmp_path):
    model = HybridRewardModel(tiny_backbone("qwen2", len(tokenizer)))
    torch.nn.init.normal_(model.reward_head.weight, std=0.5)
    model.save_pretrained(tmp_path, model_card={"mode": "hybrid", "inference_head": "reward", "beta": 0.1})
    tokenizer.save_pretrained(tmp_path)
    pairs = make_pairs(5)
    prompts = [p.prompt for p in pairs]
    responses = [p.chosen for p in pairs]
    from hafrm.evaluation.scoring import RewardModel

    before = RewardModel(model, tokenizer, {"beta": 0.1}, tmp_path).score_batch(prompts, responses, batch_size=2)
    loaded = hafrm.load(tmp_path)
    after = loaded.score_batch(prompts, responses, batch_size=3)
    assert torch.allclose(torch.tensor(before), torch.tensor(after), atol=1e-6)
    assert len(set(round(x, 5) for x in after)) > 1  # the scores really depend on the input
    assert loaded.score(prompts[0], responses[0]) == pytest.approx(after[0], abs=1e-6)  # batch of 1 vs 3
    # the policy head is an ordinary causal LM folder
    plain = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert torch.equal(plain.lm_head.weight, loaded.model.backbone.lm_head.weight)


def test_a_folder_saved_with_a_biased_head_loads_with_its_bias(tokenizer, tmp_path):
    """Folders written before the head lost its bias keep scoring as they did."""
    head = torch.nn.Linear(32, 1)
    torch.nn.init.normal_(head.weight, std=0.5)
    head.bias.data.fill_(0.25)
    model = HybridRewardModel(tiny_backbone("llama", len(tokenizer)), reward_head=head).eval()
    model.save_pretrained(tmp_path, model_card={"mode": "hybrid", "inference_head": "reward"})
    tokenizer.save_pretrained(tmp_path)
    from hafrm.evaluation.scoring import RewardModel

    pairs = make_pairs(3)
    prompts, responses = [p.prompt for p in pairs], [p.chosen for p in pairs]
    before = RewardModel(model, tokenizer, {}, tmp_path).score_batch(prompts, responses)
    loaded = hafrm.load(tmp_path)
    assert loaded.model.reward_head.bias.item() == 0.25
    assert loaded.score_batch(prompts, responses) == pytest.approx(before, abs=1e-6)


def test_load_rejects_a_non_hafrm_folder(tiny_model_dir):
    import pytest

    with pytest.raises(hafrm.HafError, match="reward_head.safetensors is missing"):
        hafrm.load(tiny_model_dir)


def test_implicit_head_of_a_simpo_model_is_its_length_normalised_logp(tokenizer, tmp_path):
    from hafrm.evaluation.scoring import RewardModel

    model = HybridRewardModel(tiny_backbone("llama", len(tokenizer))).eval()
    rm = RewardModel(model, tokenizer, {"loss": "simpo", "beta": 2.0, "inference_head": "implicit"}, tmp_path)
    prompt, response = make_pairs(1)[0].prompt, make_pairs(1)[0].chosen
    ids, start = rm.encoder.encode(prompt, response)
    x = torch.tensor([ids])
    mask = torch.zeros_like(x)
    mask[0, start:] = 1
    with torch.no_grad():
        out = model(x, torch.ones_like(x), mask)
    expected = 2.0 * out.logps[0] / out.response_lengths[0]
    assert rm.score(prompt, response) == pytest.approx(expected.item(), abs=1e-5)
