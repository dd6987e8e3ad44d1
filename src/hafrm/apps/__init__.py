"""What users run: the CLI, export, the reward server, the RewardBench bridge, the benchmark."""
