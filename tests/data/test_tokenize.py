"""Tokenisation: chat-template prompts, response boundaries, truncation and counted drops."""

import torch

from hafrm.data.tokenize import PairCollator, PairTokenizer, pair_features
from hafrm.data.types import PreferencePair
from helpers import make_pairs


def test_response_starts_after_the_generation_prompt(tokenizer):
    enc = PairTokenizer(tokenizer, 512, 256)
    ids, start = enc.encode([{"role": "user", "content": "What is 2 + 2?"}], "It is 4.")
    prompt = tokenizer.decode(ids[:start])
    assert prompt.endswith("<|im_start|>assistant\n") and "What is 2 + 2?" in prompt
    assert tokenizer.decode(ids[start:]).startswith("It is 4.<|im_end|>")  # EOS is part of the response


def test_system_prompt_is_inserted_once(tokenizer):
    enc = PairTokenizer(tokenizer, 512, 256, system_prompt="Be terse.")
    ids, start = enc.encode([{"role": "user", "content": "Hi"}], "Hello")
    text = tokenizer.decode(ids[:start])
    assert text.count("Be terse.") == 1 and "SmolLM" not in text  # replaces the template's default
    with_own = [{"role": "system", "content": "Mine."}, {"role": "user", "content": "Hi"}]
    ids, start = enc.encode(with_own, "Hello")
    assert "Be terse." not in tokenizer.decode(ids[:start])


def test_plain_template_without_chat_template(tokenizer):
    plain = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    plain.chat_template = None
    ids, start = PairTokenizer(plain, 512, 256).encode([{"role": "user", "content": "Hi"}], "Hello")
    assert plain.decode(ids[:start]).endswith("user: Hi\nassistant: ")
    assert ids[-1] == plain.eos_token_id


def test_long_prompt_keeps_its_end_and_long_responses_keep_their_last_token(tokenizer):
    long = PreferencePair([{"role": "user", "content": "word " * 300 + "THE END?"}], "Yes.", "No.", source="s")
    res = PairTokenizer(tokenizer, 512, 64).tokenize([long, *make_pairs(2)])
    assert res.truncated == {("s", "prompt"): 1} and len(res.pairs) == 3
    p = res.pairs[0]
    assert p.chosen_prompt_len == 64 and "THE END?" in tokenizer.decode(p.chosen_ids[: p.chosen_prompt_len])
    wordy = PreferencePair([{"role": "user", "content": "Talk."}], "blah " * 200 + "END", "Short.", source="s")
    tight = PairTokenizer(tokenizer, 40, 20).tokenize([wordy, *make_pairs(2)])
    assert len(tight.pairs) == 3 and tight.truncated[("s", "response")] == 1  # nothing dropped, all counted
    cut = tight.pairs[0]
    full, _ = PairTokenizer(tokenizer, 40, 20).encode(wordy.prompt, wordy.chosen)
    assert len(cut.chosen_ids) == 40 and cut.chosen_ids[-2:] == full[-2:]  # the turn still closes
    assert tokenizer.decode(cut.chosen_ids[-2:]) == "<|im_end|>\n" and "END" not in tokenizer.decode(cut.chosen_ids)
    assert tokenizer.decode(cut.rejected_ids[cut.rejected_prompt_len :]) == "Short.<|im_end|>\n"  # short one untouched
    same = PreferencePair([{"role": "user", "content": "Talk."}], "blah " * 60 + "A", "blah " * 60 + "B", source="s")
    assert PairTokenizer(tokenizer, 40, 20).tokenize([same]).dropped == {("s", "identical after truncation"): 1}


def test_collator_stacks_chosen_then_rejected(tokenizer):
    res = PairTokenizer(tokenizer, 512, 256).tokenize(make_pairs(3))
    batch = PairCollator(tokenizer.pad_token_id)(pair_features(res.pairs, torch.zeros(3, 2)))
    assert batch["input_ids"].shape[0] == 6
    for i, p in enumerate(res.pairs):
        assert batch["input_ids"][i, : len(p.chosen_ids)].tolist() == p.chosen_ids
        assert batch["input_ids"][3 + i, : len(p.rejected_ids)].tolist() == p.rejected_ids
        assert batch["response_mask"][i].sum() == len(p.chosen_ids) - p.chosen_prompt_len
    assert batch["ref_chosen"].shape == (3,) and "margin" not in batch
