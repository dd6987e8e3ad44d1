"""Run inside .venv-openrlhf: score token rows with OpenRLHF's own reward-model loader.

Usage: python openrlhf_score.py REQUEST.json  ({"model": export folder, "input_ids": [[...], ...]})
Prints one JSON line: {"rewards": [...], "normalized": [...], "config_mean": m, "config_std": s}.
"""

import json
import os
import sys

os.environ.setdefault("FLASH_ATTENTION_TRITON_AMD_ENABLE", "TRUE")  # flash_attn imports without its CUDA part

import torch  # noqa: E402
from openrlhf.models import get_llm_for_sequence_regression  # noqa: E402
from transformers import AutoConfig, AutoTokenizer  # noqa: E402

request = json.loads(open(sys.argv[1]).read())
path, rows = request["model"], request["input_ids"]
pad = AutoTokenizer.from_pretrained(path).pad_token_id
T = max(len(r) for r in rows)
ids = torch.tensor([r + [pad] * (T - len(r)) for r in rows])  # right-padded with the export's pad token
mask = torch.tensor([[1] * len(r) + [0] * (T - len(r)) for r in rows])
config = AutoConfig.from_pretrained(path)
out = {"config_mean": config.mean, "config_std": config.std}
for normalize in (False, True):
    model = get_llm_for_sequence_regression(
        path,
        "reward",
        normalize_reward=normalize,
        dtype=torch.float32,  # param_dtype takes bf16/fp16 only; dtype= reaches from_pretrained and wins
        attn_implementation="eager",  # the default, flash_attention_2, needs CUDA
        value_head_prefix="score",
        init_value_head=False,
    ).eval()
    # OpenRLHF 0.11.2 under transformers 5 leaves its non-persistent mean/std buffers uninitialised
    # (loading on the meta device); set them from config.json as its loader means to.
    model.mean.fill_(config.mean)
    model.std.fill_(config.std)
    with torch.no_grad():
        rewards = model(ids, attention_mask=mask)
    out["normalized" if normalize else "rewards"] = rewards.float().tolist()
print(json.dumps(out))
