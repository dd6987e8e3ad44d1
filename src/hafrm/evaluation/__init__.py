"""Evaluation and scoring of trained models: pairwise metrics, RewardModel, baselines, Best-of-N."""
