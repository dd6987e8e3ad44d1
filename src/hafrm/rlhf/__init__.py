"""RLHF against a hafrm reward model with TRL's online trainers, measured against gold verifiers."""
