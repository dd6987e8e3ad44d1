"""What `hafrm eval` and `hafrm score` do, as functions (the CLI only parses and prints)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from hafrm.config import HafConfig
from hafrm.data.formats import DataOptions, Notes, RecordError, convert, messages
from hafrm.data.io import iter_records
from hafrm.data.sources import read_held_out
from hafrm.data.tokenize import PairTokenizer, pair_features
from hafrm.errors import DataError, HafError
from hafrm.evaluation.evaluate import EvalResult, evaluate_pairs, score_stats
from hafrm.evaluation.rewardbench import section_metrics
from hafrm.evaluation.scoring import STATS_KEY, RewardModel
from hafrm.fileio import write_json_atomic
from hafrm.heads import HEADS
from hafrm.modeling.backbone import cache_root, load_backbone
from hafrm.modeling.hybrid import HAFRM_CONFIG_FILE, HybridRewardModel
from hafrm.training.reference import reference_logps


def _train_config(rm: RewardModel) -> HafConfig:
    values = dict(rm.meta.get("train_config", {}))
    values.pop("resume", None)
    try:
        return HafConfig.from_dict(values, source=str(rm.path / "hafrm_config.json"))
    except HafError as e:
        raise HafError(f"{rm.path}: cannot read its training config: {e}") from None


def evaluate_model_dir(
    model_dir: Path,
    data: list[str],
    options: DataOptions | None = None,
    save_stats: bool = False,
    trust_remote_code: bool = False,
) -> dict[str, float]:
    """Accuracy of both heads of a saved model on `data` ('builtin' = its held-out split), RewardBench's
    section scores where its subsets are present, and each head's score mean and std; `save_stats`
    stores those in the model folder (what `--normalize` and an export's `mean` / `std` use)."""
    rm = RewardModel.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    result, dropped = evaluate_model(rm, data, options)
    metrics = dict(result.metrics)
    metrics["dropped"] = float(dropped)
    metrics |= section_metrics(metrics)
    stats = score_stats(result, f"hafrm eval --data {' '.join(data)} ({len(result.tags)} pairs)")
    for head, values in stats.items():
        metrics[f"{HEADS[head]}/mean"], metrics[f"{HEADS[head]}/std"] = values["mean"], values["std"]
    if save_stats:  # this data's statistics replace the heads it scored; other heads keep theirs
        meta = dict(rm.meta)
        meta[STATS_KEY] = {**meta.get(STATS_KEY, {}), **stats}
        try:
            write_json_atomic(Path(model_dir) / HAFRM_CONFIG_FILE, meta)
        except OSError as e:
            raise HafError(f"cannot store the statistics in {model_dir}: {e.strerror or e}") from None
    return metrics


def evaluate_model(rm: RewardModel, data: list[str], options: DataOptions | None = None) -> tuple[EvalResult, int]:
    """Every head of a loaded model on `data`, per pair, and how many pairs tokenisation dropped."""
    cfg = _train_config(rm)
    pairs = [p for item in data for p in read_held_out(item, cfg, options).pairs]
    tok = PairTokenizer(rm.tokenizer, cfg.max_length, cfg.max_prompt_length, cfg.system_prompt).tokenize(pairs)
    if not tok.pairs:
        raise DataError(f"no pairs left to evaluate (dropped: {dict(tok.dropped)})")
    ref = None
    if cfg.needs_reference:
        base = load_backbone(rm.meta["base_model"], cfg.cache_dir, rm.trust_remote_code)
        ref = reference_logps(
            HybridRewardModel(base.model),
            tok.pairs,
            cache_root(cfg.cache_dir),
            rm.tokenizer.pad_token_id,
            cfg.per_device_eval_batch_size,
            pack_length=cfg.pack_length if cfg.packing else None,
            prefix_sharing=cfg.shares_prefixes,
        ).logps
    result = evaluate_pairs(rm.model, cfg, tok.pairs, pair_features(tok.pairs, ref), rm.tokenizer.pad_token_id)
    return result, sum(tok.dropped.values())


def score_file(
    model_dir: Path,
    path: Path,
    head: str | None,
    batch_size: int,
    normalize: bool = False,
    trust_remote_code: bool = False,
) -> list[dict[str, Any]]:
    """Records of `path` with `score` (for {prompt, response}) or `score_chosen`/`score_rejected`."""
    rm = RewardModel.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    records = list(iter_records(path))
    if not records:
        raise DataError(f"{path}: no records to score")
    prompts, responses, slots = [], [], []
    for where, rec in records:
        if isinstance(rec, RecordError):
            raise rec
        if isinstance(rec, dict) and "response" in rec:
            if not isinstance(rec["response"], str):
                raise DataError(f"{where}: field 'response' must be a string")
            if "prompt" not in rec:
                raise DataError(f"{where}: missing field 'prompt'")
            prompts.append(messages(rec["prompt"], where, "prompt"))
            responses.append(rec["response"])
            slots.append(["score"])
        else:
            pair = convert(rec, where, "trl", DataOptions(), Notes())
            prompts += [pair.prompt, pair.prompt]
            responses += [pair.chosen, pair.rejected]
            slots.append(["score_chosen", "score_rejected"])
    scores = iter(rm.score_batch(prompts, responses, head=head, batch_size=batch_size, normalize=normalize))
    out = []
    for (_, rec), names in zip(records, slots, strict=True):
        row = dict(rec) if isinstance(rec, dict) else {"record": rec}
        row.update({name: next(scores) for name in names})
        out.append(row)
    return out


def plot_scores(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """A histogram of scored records: chosen against rejected where the records are pairs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = {
        name: [r[key] for r in rows if key in r]
        for name, key in (("score", "score"), ("chosen", "score_chosen"), ("rejected", "score_rejected"))
    }
    series = {k: v for k, v in series.items() if v}
    values = [x for v in series.values() for x in v]
    edges = np.histogram_bin_edges(values, bins=min(50, max(5, len(values) // 4)))  # shared by every series
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for name, v in series.items():
        ax.hist(v, bins=edges, alpha=0.55, label=f"{name} (n={len(v)})")
    if "chosen" in series:
        wins = sum(c > r for c, r in zip(series["chosen"], series["rejected"], strict=True))
        title += f" - chosen higher in {wins} of {len(series['chosen'])} pairs"
    ax.set(xlabel="score", ylabel="responses", title=title)
    ax.title.set_fontsize(9)
    ax.legend()
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=120)
    except (OSError, ValueError) as e:  # ValueError: a file ending matplotlib cannot write
        raise HafError(f"cannot write the plot to {path}: {getattr(e, 'strerror', None) or e}") from None
    finally:
        plt.close(fig)
