"""``usage``: the agent reads its own usage today, so it can adapt its behaviour (answer
shorter as its token budget runs out, back off after errors).

The numbers are the committed ones: turns, CPU, LLM tokens, HTTP calls and failed turns of
the current UTC day up to the turn before this one, with the kind's daily budgets beside
them. An agent only ever sees its own usage.
"""

from __future__ import annotations

from ._base import BaseGrant, Capability, TurnView, host_call
from ._ops import encode_result


class UsageGrant(BaseGrant):
    pass


class UsageToday(Capability[None]):
    """The agent's own usage and budgets today."""

    name = "usage"
    Grant = UsageGrant

    @host_call("today")
    def today(self, turn: TurnView) -> bytes:
        used = turn.reads.read_usage(turn.address, turn.day)
        budgets = turn.budgets
        return encode_result(
            {
                "day": turn.day,
                "turns": used.turns,
                "cpu_ms": used.cpu_ms,
                "llm_input_tokens": used.llm_input_tokens,
                "llm_output_tokens": used.llm_output_tokens,
                "llm_tokens": used.llm_tokens,
                "http_calls": used.http_calls,
                "errors": used.errors,
                "budgets": {
                    "llm_tokens_per_day": budgets.llm_tokens_per_day,
                    "http_calls_per_day": budgets.http_calls_per_day,
                    "cpu_ms_per_day": budgets.cpu_ms_per_day,
                    "storage_bytes": budgets.storage_bytes,
                },
            }
        )
