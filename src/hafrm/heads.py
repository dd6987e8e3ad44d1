"""The two heads that score a response: the reward head and the policy head's implicit reward.

Users, modes and saved scores name a head `reward` or `implicit`; metrics name it by a prefix
(`reward_head/accuracy`, `implicit/accuracy`).
"""

HEADS: dict[str, str] = {"reward": "reward_head", "implicit": "implicit"}  # head -> its metrics' prefix
HEAD_NAMES = tuple(HEADS)
# head -> the keys of its chosen and rejected scores in saved records (an experiment cell's scores)
SCORE_KEYS: dict[str, tuple[str, str]] = {head: (f"{head}_chosen", f"{head}_rejected") for head in HEAD_NAMES}
