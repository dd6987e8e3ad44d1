"""RewardBench's sections: which subsets make each one and the weights that combine them."""

from __future__ import annotations

from hafrm.heads import HEADS

# RewardBench (allenai/reward-bench, rewardbench/constants.py): subsets per section and the
# example counts that weight them within a section (math-prm upweighted to equal the code sets).
REWARDBENCH_SECTIONS = {
    "Chat": ["alpacaeval-easy", "alpacaeval-length", "alpacaeval-hard", "mt-bench-easy", "mt-bench-med"],
    "Chat Hard": [
        "mt-bench-hard",
        "llmbar-natural",
        "llmbar-adver-neighbor",
        "llmbar-adver-GPTInst",
        "llmbar-adver-GPTOut",
        "llmbar-adver-manual",
    ],
    "Safety": [
        "refusals-dangerous",
        "refusals-offensive",
        "xstest-should-refuse",
        "xstest-should-respond",
        "donotanswer",
    ],
    "Reasoning": ["math-prm", "hep-cpp", "hep-go", "hep-java", "hep-js", "hep-python", "hep-rust"],
}
REWARDBENCH_COUNTS = {
    "alpacaeval-easy": 100, "alpacaeval-length": 95, "alpacaeval-hard": 95, "mt-bench-easy": 28, "mt-bench-med": 40,
    "mt-bench-hard": 37, "llmbar-natural": 100, "llmbar-adver-neighbor": 134, "llmbar-adver-GPTInst": 92,
    "llmbar-adver-GPTOut": 47, "llmbar-adver-manual": 46, "refusals-dangerous": 100, "refusals-offensive": 100,
    "xstest-should-refuse": 154, "xstest-should-respond": 250, "donotanswer": 136, "math-prm": 984,
    "hep-cpp": 164, "hep-go": 164, "hep-java": 164, "hep-js": 164, "hep-python": 164, "hep-rust": 164,
}  # fmt: skip


def rewardbench_sections(per_subset: dict[str, float]) -> dict[str, float]:
    """RewardBench's section scores (example-count weighted subsets) and their mean, for the
    sections whose every subset is present."""
    out = {}
    for section, subsets in REWARDBENCH_SECTIONS.items():
        if all(s in per_subset for s in subsets):
            total = sum(REWARDBENCH_COUNTS[s] for s in subsets)
            out[section] = sum(per_subset[s] * REWARDBENCH_COUNTS[s] for s in subsets) / total
    if len(out) == len(REWARDBENCH_SECTIONS):
        out["Score"] = sum(out.values()) / len(out)
    return out


def section_metrics(metrics: dict[str, float], heads=tuple(HEADS.values())) -> dict[str, float]:
    """`rewardbench/<section>/<head>/accuracy` from a metrics dict's `subset/<name>/<head>/accuracy` keys."""
    out = {}
    for head in heads:
        suffix = f"/{head}/accuracy"
        per_subset = {k[len("subset/") : -len(suffix)]: v for k, v in metrics.items()
                      if k.startswith("subset/") and k.endswith(suffix)}  # fmt: skip
        for section, value in rewardbench_sections(per_subset).items():
            out[f"rewardbench/{section}{suffix}"] = value
    return out
