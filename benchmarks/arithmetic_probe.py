"""Is arithmetic correctness linearly readable from the untrained SmolLM2's hidden states? JSON out.

    python benchmarks/arithmetic_probe.py --out arithmetic_probe.json

A diagnostic for the main job's weak spot (the reward head scores the built-in arithmetic near
chance while the implicit reward, a log-prob difference, does not). For the built-in arithmetic
pairs as the main job sees them (its empty system turn, its group split), it takes the frozen
embedded model's hidden states at
a few layers and at the last three positions (the answer's last token, `<|im_end|>` and the
template's trailing newline, where the reward is read), and fits an L2 logistic regression on
chosen - rejected (both signs) over the training pairs: the held-out accuracy is what a linear
reward head could get from those features before any fine-tuning. The zero-shot log-prob
accuracy (sum over the response tokens, chosen against rejected) is reported alongside, held out,
over all pairs and per subset.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

from hafrm.config import HafConfig
from hafrm.data.io import split_by_prompt
from hafrm.data.sources import builtin_pairs
from hafrm.data.tokenize import PairTokenizer
from hafrm.modeling.backbone import load_backbone
from hafrm.objectives.accuracy import accuracy

LAYERS = (10, 15, 20, 25, 30)
POSITIONS = {-3: "answer's last token", -2: "<|im_end|>", -1: "trailing newline (reward read here)"}


@torch.no_grad()
def features(model, encoder, pairs) -> tuple[dict[tuple[int, int], torch.Tensor], torch.Tensor]:
    """(layer, position) -> (N, H) chosen - rejected hidden states; (N,) chosen - rejected log-prob."""
    diffs: dict[tuple[int, int], list[torch.Tensor]] = {(layer, p): [] for layer in LAYERS for p in POSITIONS}
    logp_diff = []
    for pair in pairs:
        side = {}
        for name in ("chosen", "rejected"):
            ids, prompt_len = encoder.encode(pair.prompt, getattr(pair, name))
            out = model(torch.tensor([ids]), output_hidden_states=True)
            logp = F.log_softmax(out.logits[0, prompt_len - 1 : -1].float(), -1)
            side[name] = (out.hidden_states, logp.gather(-1, torch.tensor(ids[prompt_len:])[:, None]).sum())
        for key in diffs:
            layer, pos = key
            diffs[key].append(side["chosen"][0][layer][0, pos] - side["rejected"][0][layer][0, pos])
        logp_diff.append(side["chosen"][1] - side["rejected"][1])
    return {k: torch.stack(v).float() for k, v in diffs.items()}, torch.stack(logp_diff)


def probe(train: torch.Tensor, test: torch.Tensor, l2: float) -> tuple[float, float]:
    """Train/test accuracy of a logistic regression on scaled differences, both signs (scaled, not
    centred: the mean difference is the signal)."""
    scale = train.pow(2).mean(0).sqrt() + 1e-6
    x, xt = train / scale, test / scale
    x, y = torch.cat([x, -x]), torch.cat([torch.ones(len(x)), torch.zeros(len(x))])
    w = torch.zeros(x.shape[1], requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=500)

    def closure():
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(x @ w, y) + l2 * w.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return ((x @ w > 0).float() == y).float().mean().item(), (xt @ w > 0).float().mean().item()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=800, help="built-in arithmetic pairs (split 80/20 by group)")
    ap.add_argument("--seed", type=int, default=42, help="task and split seed (the main job's is 42)")
    ap.add_argument("--l2", type=float, default=1e-2)
    ap.add_argument("--out", default="arithmetic_probe.json")
    args = ap.parse_args()
    start = time.perf_counter()
    backbone = load_backbone("smollm2")
    model, tokenizer, path = backbone.model.eval(), backbone.tokenizer, backbone.path
    encoder = PairTokenizer(tokenizer, max_length=512, max_prompt_length=256)
    pairs = builtin_pairs(HafConfig(seed=args.seed), ("arithmetic",), n=args.pairs)  # as the main job sees them
    train, test = split_by_prompt(pairs, 0.2, args.seed)
    f_train, logp_train = features(model, encoder, train)
    f_test, logp_test = features(model, encoder, test)
    rows = []
    for key in sorted(f_train):
        fit, held_out = probe(f_train[key], f_test[key], args.l2)
        rows.append({"layer": key[0], "position": POSITIONS[key[1]], "train": fit, "held_out": held_out})
        print(f"layer {key[0]:2d}  {POSITIONS[key[1]]:36s} train {fit:.3f}  held-out {held_out:.3f}", flush=True)

    def zero_shot(diff: torch.Tensor) -> float:
        return accuracy(diff, torch.zeros_like(diff)).mean().item()  # a tie counts half

    logp_all, subsets = torch.cat([logp_train, logp_test]), [p.meta["subset"] for p in train + test]
    per_subset = {s: zero_shot(logp_all[[i for i, x in enumerate(subsets) if x == s]]) for s in sorted(set(subsets))}
    report = {
        "model": str(path),
        "train_pairs": len(train),
        "held_out_pairs": len(test),
        "linear_probe": rows,
        "zero_shot_logprob_accuracy": {"held_out": zero_shot(logp_test), "all": zero_shot(logp_all), **per_subset},
        "seconds": round(time.perf_counter() - start, 1),
    }
    print("zero-shot log-prob accuracy:", json.dumps(report["zero_shot_logprob_accuracy"]))
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
