"""The one record every data source is normalised to: a preference pair."""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass, field
from typing import Any


@dataclass(frozen=True)
class PreferencePair:
    """A prompt (chat messages) with a preferred and a dispreferred response.

    `prompt` is a list of chat messages (`{"role": ..., "content": ...}`) ending with a user turn;
    `chosen` / `rejected` are the two assistant replies. `margin` is an optional per-pair
    Bradley-Terry margin; `source` names the dataset a pair came from (metrics are reported per
    source); `meta` carries free-form tags such as `{"skill": "arithmetic"}`.
    """

    prompt: list[dict[str, str]]
    chosen: str
    rejected: str
    _: KW_ONLY  # the three above may be given in order; the rest by name
    margin: float | None = None
    source: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    # where it was read: "file:line" (or "file:#index" for a JSON list or table); not compared,
    # and not written by `hafrm data convert`
    origin: str = field(default="", compare=False, repr=False)

    def prompt_text(self) -> str:
        """The prompt as one string, for hashing and display."""
        return "\n".join(f"{m['role']}: {m['content']}" for m in self.prompt)
