"""The training recipe and its parts: the Trainer, reference log-probs, precision."""
