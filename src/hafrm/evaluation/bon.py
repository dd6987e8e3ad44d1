"""Best-of-N: sample N responses per held-out prompt from a policy, let each reward model pick one,
and judge the picks.

Judges: the built-in task's gold verifiers (the share of picks that are correct), a judge reward
model (`--judge MODEL_DIR`: its score of each pick, and whether the pick is in its top k), or an
OpenAI-compatible chat endpoint (`--judge-url`: the picks of two methods compared pairwise, in
both orders). Candidates are generated once and cached in the output folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

import torch
from transformers.utils.logging import tqdm  # the bars of the Trainer: shown in logs too

from hafrm.config import HafConfig
from hafrm.data import builtin
from hafrm.data.formats import DataOptions
from hafrm.data.io import split_by_prompt
from hafrm.data.sources import read_source
from hafrm.data.types import PreferencePair
from hafrm.errors import HafError
from hafrm.evaluation.scoring import load
from hafrm.fileio import write_text_atomic
from hafrm.modeling.backbone import load_backbone
from hafrm.objectives.accuracy import accuracy

log = logging.getLogger(__name__)
CANDIDATES = "candidates.jsonl"


@dataclass(kw_only=True)
class BonSpec:
    prompts: str = "builtin"  # 'builtin' / 'builtin:SKILL,...' (gold verifiers), or any --data source
    num_prompts: int = 32
    n: int = 8  # candidates per prompt
    policy: str = "smollm2"
    temperatures: list[float] = field(default_factory=lambda: [0.5, 0.8, 1.1, 1.4])  # candidate i: i mod len
    max_new_tokens: int = 48
    seed: int = 0
    eval_fraction: float = 0.2  # prompts come from the held-out side of this split (the training default)
    split_seed: int = 42  # ... made with this seed (HafConfig's default seed)
    top_k: list[int] = field(default_factory=lambda: [1, 2, 3])

    def fingerprint(self) -> str:
        keys = ("prompts", "num_prompts", "n", "policy", "temperatures", "max_new_tokens", "seed", "eval_fraction",
                "split_seed")  # fmt: skip
        values = {k: getattr(self, k) for k in keys} | {"builtin_pairs": HafConfig().builtin_pairs}  # the prompts' pool
        return hashlib.blake2b(json.dumps(values).encode(), digest_size=8).hexdigest()


def held_out_prompts(spec: BonSpec) -> list[PreferencePair]:
    """The first `num_prompts` distinct held-out prompts (pairs, for their messages and specs)."""
    pairs = read_source(spec.prompts, HafConfig(seed=spec.split_seed), DataOptions(on_error="skip")).pairs
    held = split_by_prompt(pairs, spec.eval_fraction, spec.split_seed)[1]
    seen, out = set(), []
    for p in held:
        key = p.prompt_text()
        if key not in seen:
            seen.add(key)
            out.append(p)
    if not out:
        raise HafError(f"{spec.prompts}: no held-out prompts")
    return out[: spec.num_prompts]


@torch.no_grad()
def generate_candidates(spec: BonSpec, prompts: list[PreferencePair], log_line=print) -> list[dict[str, Any]]:
    """N samples per prompt from the policy, spread over the temperatures; each judged by the gold
    verifier when the prompt has a spec."""
    policy = load_backbone(spec.policy)
    model, tokenizer = policy.model.eval(), policy.tokenizer
    tokenizer.padding_side = "left"
    texts = [tokenizer.apply_chat_template(p.prompt, tokenize=False, add_generation_prompt=True) for p in prompts]
    records: list[dict[str, Any]] = []
    per_temp = [sum(1 for i in range(spec.n) if i % len(spec.temperatures) == t) for t in range(len(spec.temperatures))]
    with tqdm(total=spec.n * len(prompts), desc=f"sampling from {spec.policy}", unit="response") as bar:
        for t, (temperature, k) in enumerate(zip(spec.temperatures, per_temp, strict=True)):
            if k == 0:
                continue
            torch.manual_seed(spec.seed * 1000 + t)
            enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
            out = model.generate(
                **enc,
                do_sample=True,
                temperature=temperature,
                top_p=1.0,
                top_k=0,
                num_return_sequences=k,
                max_new_tokens=spec.max_new_tokens,
                pad_token_id=tokenizer.pad_token_id,
            )
            new = out[:, enc["input_ids"].shape[1] :]
            for row, ids in enumerate(new):
                p = prompts[row // k]
                response = tokenizer.decode(ids, skip_special_tokens=True).strip()
                rec = {"prompt_index": row // k, "prompt": p.prompt, "response": response, "temperature": temperature}
                if "spec" in p.meta:
                    rec["gold"] = bool(builtin.is_correct(p.meta["spec"], response))
                records.append(rec)
            bar.update(len(new))
            log_line(f"sampled {len(new)} responses at temperature {temperature}")
    records.sort(key=lambda r: (r["prompt_index"], r["temperature"]))
    return records


def load_or_generate(spec: BonSpec, out: Path, log_line=print) -> list[dict[str, Any]]:
    """Candidates from `out/candidates.jsonl` if made with the same spec, else generated and saved."""
    path = out / CANDIDATES
    meta = out / "candidates.meta.json"
    if path.is_file() and meta.is_file() and json.loads(meta.read_text()).get("fingerprint") == spec.fingerprint():
        return [json.loads(line) for line in path.read_text().splitlines()]
    out.mkdir(parents=True, exist_ok=True)
    records = generate_candidates(spec, held_out_prompts(spec), log_line)
    write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    write_text_atomic(meta, json.dumps({"fingerprint": spec.fingerprint(), "spec": asdict(spec)}, indent=2) + "\n")
    return records


def groups(records: Sequence[dict[str, Any]]) -> list[list[int]]:
    """Candidate indices per prompt, in prompt order."""
    by: dict[int, list[int]] = {}
    for i, r in enumerate(records):
        by.setdefault(r["prompt_index"], []).append(i)
    return [by[k] for k in sorted(by)]


def picks(scores: Sequence[float], grouped: list[list[int]]) -> list[int]:
    """The candidate each prompt's highest score picks (the first on a tie)."""
    return [max(g, key=lambda i: (scores[i], -i)) for g in grouped]


def topk_recall(picked: Sequence[int], judge: Sequence[float], grouped: list[list[int]], k: int) -> float:
    """Share of prompts whose pick is among the judge's k best candidates. A pick tied with others
    across the k-th place counts by the chance a random order of the tie puts it inside."""
    hits = 0.0
    for pick, g in zip(picked, grouped, strict=True):
        better = sum(judge[i] > judge[pick] for i in g)
        tied = sum(judge[i] == judge[pick] for i in g)  # the pick included
        hits += min(max(k - better, 0), tied) / tied
    return hits / len(grouped)


def win_rate(a: Sequence[int], b: Sequence[int], value: Callable[[int], float]) -> float:
    """How often A's pick beats B's by `value` (a tie, e.g. the same pick, counts half)."""
    wins = [accuracy(value(x), value(y)) for x, y in zip(a, b, strict=True)]
    return sum(wins) / len(wins)


class ChatJudge:
    """A pairwise judge behind an OpenAI-compatible `/chat/completions` endpoint. Each comparison
    is asked in both orders; a verdict counts only when both orders agree (else a tie)."""

    TEMPLATE = (
        "Which response answers the user better? Reply with exactly one letter, A or B.\n\n"
        "[User]\n{prompt}\n\n[Response A]\n{a}\n\n[Response B]\n{b}"
    )

    def __init__(self, url: str, model: str, api_key: str | None = None, timeout: float = 60.0):
        self.url = url.rstrip("/") + "/chat/completions"
        self.model, self.api_key, self.timeout = model, api_key, timeout
        # every tie is counted by its cause and reported with the win rates
        self.counts = {"comparisons": 0, "same_response": 0, "unparsed_replies": 0, "orders_disagree": 0}

    def _ask(self, prompt: str, a: str, b: str) -> str | None:
        body = {
            "model": self.model,
            "temperature": 0,
            "max_tokens": 2,
            "messages": [{"role": "user", "content": self.TEMPLATE.format(prompt=prompt, a=a, b=b)}],
        }
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(self.url, json.dumps(body).encode(), headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                text = json.loads(resp.read())["choices"][0]["message"]["content"].strip().upper()
        except (urllib.error.URLError, KeyError, IndexError, ValueError, TimeoutError) as e:
            raise HafError(f"judge {self.url}: {type(e).__name__}: {e}") from None
        letter = re.match(r"[\s(\[*\"']*([AB])(?![A-Z])", text)  # "A", "(B)", "**A**", not "Both"
        if letter:
            return letter.group(1)
        self.counts["unparsed_replies"] += 1
        log.warning("judge %s: reply %r is neither A nor B; counted as a tie", self.url, text[:40])
        return None

    def compare(self, prompt: str, x: str, y: str) -> float:
        """1 if x wins in both orders, 0 if y does, 0.5 otherwise (counted in `self.counts`)."""
        self.counts["comparisons"] += 1
        if x == y:
            self.counts["same_response"] += 1
            return 0.5
        first, second = self._ask(prompt, x, y), self._ask(prompt, y, x)
        if first == "A" and second == "B":
            return 1.0
        if first == "B" and second == "A":
            return 0.0
        if first is not None and second is not None:
            self.counts["orders_disagree"] += 1
        return 0.5


def _prompt_text(messages: list[dict[str, str]]) -> str:
    return "\n".join(m["content"] for m in messages if m["role"] != "system")


def run_bon(
    spec: BonSpec,
    model_dirs: dict[str, Path],
    out: Path,
    judge_dir: Path | None = None,
    chat_judge: ChatJudge | None = None,
    log_line=print,
) -> dict[str, Any]:
    """Score every candidate with every model, pick per prompt, judge; returns the report."""
    records = load_or_generate(spec, out, log_line)
    grouped = groups(records)
    prompts = [r["prompt"] for r in records]
    responses = [r["response"] for r in records]
    scores = {}
    for name, path in model_dirs.items():
        scores[name] = load(path).score_batch(prompts, responses)
        log_line(f"scored {len(records)} candidates with {name}")
    rng = random.Random(spec.seed)
    chosen = {name: picks(s, grouped) for name, s in scores.items()}
    chosen["random"] = [rng.choice(g) for g in grouped]
    report: dict[str, Any] = {"spec": asdict(spec), "prompts": len(grouped), "candidates": len(records), "methods": {}}
    has_gold = all("gold" in r for r in records)
    judge = load(judge_dir).score_batch(prompts, responses) if judge_dir else None
    for name, picked in chosen.items():
        m: dict[str, Any] = {}
        if has_gold:
            m["gold_correct"] = sum(records[i]["gold"] for i in picked) / len(picked)
        if judge is not None:
            m["judge_score"] = sum(judge[i] for i in picked) / len(picked)
            m["top_k_recall"] = {str(k): topk_recall(picked, judge, grouped, k) for k in spec.top_k}
        report["methods"][name] = m
    if has_gold:
        report["gold"] = {
            "candidates_correct": sum(r["gold"] for r in records) / len(records),
            "oracle": sum(any(records[i]["gold"] for i in g) for g in grouped) / len(grouped),
        }
    wins: dict[str, dict[str, float]] = {}
    for a, b in combinations(list(chosen), 2):
        w: dict[str, float] = {}
        if has_gold:
            w["gold"] = win_rate(chosen[a], chosen[b], lambda i: float(records[i]["gold"]))
        if judge is not None:
            w["judge_model"] = win_rate(chosen[a], chosen[b], lambda i: judge[i])
        if chat_judge is not None:
            verdicts = [
                chat_judge.compare(_prompt_text(records[x]["prompt"]), records[x]["response"], records[y]["response"])
                for x, y in zip(chosen[a], chosen[b], strict=True)
            ]
            w["chat_judge"] = sum(verdicts) / len(verdicts)
        wins[f"{a} vs {b}"] = w
    report["win_rates"] = wins
    if chat_judge is not None:
        report["chat_judge"] = dict(chat_judge.counts)  # how many comparisons were ties, and why
    report["picks"] = {name: [records[i]["response"] for i in picked] for name, picked in chosen.items()}
    write_text_atomic(out / "bon.json", json.dumps(report, indent=2) + "\n")
    return report
