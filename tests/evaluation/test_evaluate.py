"""Per-head accuracy overall, per tag (source or skill) and per subset, by hand."""

import torch

from hafrm.config import HafConfig
from hafrm.evaluation.evaluate import EvalResult, summary_metrics


def test_accuracy_per_tag_and_subset_by_hand():
    result = EvalResult(
        metrics={},
        reward_chosen=torch.tensor([1.0, 0.0, 2.0, 1.0]),
        reward_rejected=torch.tensor([0.0, 1.0, 2.0, 0.0]),  # right, wrong, tie (0.5), right
        implicit_chosen=torch.tensor([0.0, 1.0, 0.0, 0.0]),
        implicit_rejected=torch.tensor([1.0, 0.0, 1.0, 1.0]),  # only the second is right
        tags=["hh", "hh", "pku", "rb"],
        subsets=["", "", "", "math-prm"],
    )
    m = summary_metrics(result, HafConfig())
    assert m["reward_head/accuracy"] == 2.5 / 4 and m["implicit/accuracy"] == 0.25
    assert m["tag/hh/reward_head/accuracy"] == 0.5 and m["tag/pku/reward_head/accuracy"] == 0.5
    assert m["tag/hh/implicit/accuracy"] == 0.5 and m["subset/math-prm/reward_head/accuracy"] == 1.0
    assert not any(k.startswith("subset/") and "math-prm" not in k for k in m)  # no subset, no key
    assert m["accuracy"] == m["reward_head/accuracy"] and m["pairs"] == 4  # hybrid scores with the reward head
