"""Run inside .venv-openrlhf: ask a reward server for one query with OpenRLHF's own HTTP client,
the call its rollouts make with `--reward.remote_url URL`.

Usage: python openrlhf_remote.py URL QUERY PROMPT   Prints one JSON line: the server's answer.
"""

import asyncio
import json
import os
import sys

os.environ.setdefault("FLASH_ATTENTION_TRITON_AMD_ENABLE", "TRUE")

from openrlhf.utils.agent import SingleTurnAgentExecutor  # noqa: E402

url, query, prompt = sys.argv[1:4]
executor = SingleTurnAgentExecutor(url)
(answer,) = asyncio.run(executor._fetch_rewards_via_http([query], [prompt], [None]))
print(json.dumps(answer))
