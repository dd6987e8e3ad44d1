"""The model: the backbone loader, the two-headed HybridRewardModel, the frozen-prefix cache."""
