"""`hafrm export`: a hafrm model folder as the standard folders other tools load.

`seq-cls`: a `*ForSequenceClassification` folder (backbone under the architecture's base-model
prefix, the reward head as `score`, `num_labels` 1) that TRL, OpenRLHF, RewardBench, vLLM and
verl load with `AutoModelForSequenceClassification`, no hafrm and no remote code. `causal-lm`:
the policy head (backbone + LM head) alone, for `AutoModelForCausalLM` and `generate`.
"""

from __future__ import annotations

import copy
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForSequenceClassification

from hafrm.data.tokenize import pad_rows
from hafrm.errors import HafError
from hafrm.evaluation.scoring import MIN_STD, STATS_KEY, RewardModel
from hafrm.version import __version__

TARGETS = ("seq-cls", "causal-lm")
PAD_TOKEN = "<|pad|>"  # added when the tokenizer's pad token can end a formatted text
_PROBES = [("What is 2 + 3?", "5"), ("Name a colour.", "Blue, like the sky on a clear day.")]


@dataclass(frozen=True, kw_only=True)
class ExportResult:
    out: Path
    target: str
    pad_token: str | None  # the export's pad token (seq-cls)
    pad_token_added: bool  # a dedicated pad token was added (the original could end a text)
    score_offset: float  # hafrm score = export score + this (a legacy reward-head bias; else 0)
    max_abs_diff: float  # export vs hafrm scores on probe texts (seq-cls), padded both sides


def export_model(
    model_dir: str | Path, target: str, out: str | Path, overwrite: bool = False, trust_remote_code: bool = False
) -> ExportResult:
    """Write `model_dir` (a `hafrm train` folder) to `out` as `target` ('seq-cls' or 'causal-lm')."""
    if target not in TARGETS:
        raise HafError(f"unknown export target {target!r}; accepted: {', '.join(TARGETS)}")
    out = _check_out(Path(model_dir), Path(out), overwrite)
    rm = RewardModel.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    tmp, old = out.with_name(f".{out.name}.partial"), out.with_name(f".{out.name}.old")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        if target == "causal-lm":
            rm.model.backbone.save_pretrained(tmp)
            rm.tokenizer.save_pretrained(tmp)
            result = ExportResult(out=out, target=target, pad_token=None, pad_token_added=False, score_offset=0.0,
                                  max_abs_diff=0.0)  # fmt: skip
        else:
            result = _write_seq_cls(rm, tmp, out)
        _add_legacy_keys(tmp)
        if out.exists():  # replaced only once the new folder is complete: never a moment with neither
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    except OSError as e:
        raise HafError(f"cannot write {out}: {e.strerror or e}") from None
    return result


def _check_out(model_dir: Path, out: Path, overwrite: bool) -> Path:
    """`out`, resolved, if writing there cannot destroy the model, the working folder or other files."""
    out, src = out.resolve(), model_dir.resolve()
    if src.is_relative_to(out):
        raise HafError(f"{out} is or holds the model folder {src}: choose another output folder")
    if Path.cwd().resolve().is_relative_to(out) or out.parent == out:
        raise HafError(f"{out} holds the working folder: choose another output folder")
    if out.exists() and not out.is_dir():
        raise HafError(f"{out} exists and is not a folder")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise HafError(f"{out} exists and is not empty (pass --overwrite to replace it)")
    return out


def _write_seq_cls(rm: RewardModel, tmp: Path, out: Path) -> ExportResult:
    if rm.default_head != "reward":
        raise HafError(
            f"{rm.path} was trained with mode {rm.meta.get('mode')!r}: it is scored by its implicit head and its "
            "reward head is untrained, so a seq-cls export would score nothing; export --to causal-lm instead"
        )
    backbone, head = rm.model.backbone, rm.model.reward_head
    config = copy.deepcopy(backbone.config)
    config.num_labels = 1
    config.architectures = None
    try:
        model = AutoModelForSequenceClassification.from_config(config, dtype=torch.float32)
    except ValueError as e:
        raise HafError(f"{type(backbone).__name__} has no sequence-classification counterpart: {e}") from None
    base = getattr(model, model.base_model_prefix, None)
    score = getattr(model, "score", None)
    if base is None or not isinstance(score, torch.nn.Linear) or score.out_features != 1:
        raise HafError(f"{type(model).__name__} has no `score` head of one output: it cannot take the reward head")
    missing, unexpected = base.load_state_dict(backbone.get_decoder().state_dict(), strict=False)
    if missing or unexpected:
        raise HafError(f"{type(model).__name__}: backbone weights do not fit (missing {missing[:3]}, "
                       f"unexpected {unexpected[:3]})")  # fmt: skip
    offset = float(head.bias.item()) if head.bias is not None else 0.0
    with torch.no_grad():
        score.weight.copy_(head.weight)
        if score.bias is not None:  # an architecture whose score has a bias takes it as it is
            score.bias.fill_(offset)
            offset = 0.0
    tokenizer = copy.deepcopy(rm.tokenizer)
    added = _ensure_safe_pad(model, tokenizer, rm.encoder.closing)
    model.eval()
    diff = _check_scores(rm, model, tokenizer, offset)
    extra: dict[str, Any] = {"hafrm_version": __version__, "source": str(rm.path), "mode": rm.meta.get("mode")}
    if offset:
        extra["score_offset"] = offset  # hafrm score = export score + score_offset
    stats = rm.meta.get(STATS_KEY, {}).get("reward")
    if stats and stats["std"] >= MIN_STD:  # OpenRLHF's names: it applies (r - mean) / std when normalisation is on
        model.config.mean, model.config.std = stats["mean"] - offset, stats["std"]
    model.config.hafrm_export = extra
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    return ExportResult(out=out, target="seq-cls", pad_token=tokenizer.pad_token, pad_token_added=added,
                        score_offset=offset, max_abs_diff=diff)  # fmt: skip


def _ensure_safe_pad(model: Any, tokenizer: Any, closing: list[int]) -> bool:
    """Give the export a pad token that no formatted text ends with.

    transformers' seq-cls models read the score at the last token that is not `pad_token_id`;
    where pad == eos (SmolLM2: both `<|im_end|>`) or pad closes the assistant turn, a text that
    ends with that token would be scored one token early. Then a dedicated pad token is added
    (the embedding grows by one row where the vocabulary has no spare one)."""
    risky = {tokenizer.eos_token_id, tokenizer.bos_token_id, *closing}
    if tokenizer.pad_token_id is not None and tokenizer.pad_token_id not in risky:
        model.config.pad_token_id = tokenizer.pad_token_id
        return False
    tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    rows = model.get_input_embeddings().weight.shape[0]
    if tokenizer.pad_token_id >= rows:
        model.resize_token_embeddings(tokenizer.pad_token_id + 1, mean_resizing=False)
    model.config.pad_token_id = tokenizer.pad_token_id
    model.config.get_text_config().pad_token_id = tokenizer.pad_token_id
    return True


def _check_scores(rm: RewardModel, model: Any, tokenizer: Any, offset: float) -> float:
    """The export's scores against hafrm's on probe texts, right- and left-padded together; raise if apart."""
    encoded = [rm.encode(p, r) for p, r in _PROBES]
    seqs = [e.ids for e in encoded] + [[*encoded[0].ids, tokenizer.eos_token_id]]  # one ends with eos
    expected = torch.tensor(rm.score_ids(seqs, [0] * len(seqs), head="reward"))
    worst = 0.0
    for side in ("right", "left"):
        batch = pad_rows(seqs, [0] * len(seqs), tokenizer.pad_token_id, padding_side=side)
        with torch.no_grad():
            got = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0] + offset
        worst = max(worst, (got - expected).abs().max().item())
    if not worst <= 1e-4 * max(1.0, expected.abs().max().item()):
        raise HafError(f"the exported model scores {worst:.3g} away from hafrm on probe texts; not written")
    return worst


def _add_legacy_keys(folder: Path) -> None:
    """Keys that transformers 4.x reads where 5.x writes others, so older stacks (RewardBench pins
    4.51) load the folder identically: the rope theta at the top level (4.x would fall back to
    10,000 silently), `torch_dtype`, a tokenizer class 4.x has (5.x writes `TokenizersBackend`),
    the model's input names (else 4.x tokenizers add `token_type_ids`, which the model rejects),
    and the chat template inside tokenizer_config.json."""
    cfg_path = folder / "config.json"
    cfg = json.loads(cfg_path.read_text())
    rope = cfg.get("rope_parameters") or {}
    if "rope_theta" in rope and "rope_theta" not in cfg:
        cfg["rope_theta"] = rope["rope_theta"]
    if rope.get("rope_type", "default") != "default" and "rope_scaling" not in cfg:
        cfg["rope_scaling"] = {k: v for k, v in rope.items() if k != "rope_theta"}
    if "dtype" in cfg and "torch_dtype" not in cfg:
        cfg["torch_dtype"] = cfg["dtype"]
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    tok_path = folder / "tokenizer_config.json"
    if not tok_path.is_file():
        return
    tok = json.loads(tok_path.read_text())
    if tok.get("tokenizer_class") == "TokenizersBackend":  # 5.x's generic fast tokenizer
        tok["tokenizer_class"] = "PreTrainedTokenizerFast"
    tok.setdefault("model_input_names", ["input_ids", "attention_mask"])
    template = folder / "chat_template.jinja"
    if template.is_file():
        tok.setdefault("chat_template", template.read_text())
    tok_path.write_text(json.dumps(tok, indent=2) + "\n")
