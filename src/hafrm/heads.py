"""The two heads that score a response: the reward head and the policy head's implicit reward.

Users, modes and saved scores name a head `reward` or `implicit`; metrics name it by a prefix
(`reward_head/accuracy`, `implicit/accuracy`).
"""

HEADS: dict[str, str] = {"reward": "reward_head", "implicit": "implicit"}  # head -> its metrics' prefix
HEAD_NAMES = tuple(HEADS)
