"""Chat users for the density load test: each user owns one agent (``KIND/user-N``), sends a
message, waits for the reply, thinks at human pace, and repeats.

Settings come from the environment (the density harness sets them):
``ROOST_LOAD_KIND`` (default ``chat``), ``ROOST_LOAD_THINK_MIN_S`` / ``ROOST_LOAD_THINK_MAX_S``
(default 10 / 30), ``ROOST_LOAD_USER_OFFSET`` (first user number).

Besides the ``message`` and ``first message`` entries, each steady-state reply adds a
``host-added`` entry: its reply time minus the time the agent waited on its LLM call.
"""

from __future__ import annotations

import itertools
import os
import random
from typing import Any

import gevent
from locust import FastHttpUser, between, task

KIND = os.environ.get("ROOST_LOAD_KIND", "chat")
THINK_MIN_S = float(os.environ.get("ROOST_LOAD_THINK_MIN_S", "10"))
THINK_MAX_S = float(os.environ.get("ROOST_LOAD_THINK_MAX_S", "30"))
_NUMBERS = itertools.count(int(os.environ.get("ROOST_LOAD_USER_OFFSET", "0")))
_WORDS = ("hello", "what", "should", "I", "cook", "tonight", "with", "rice", "and", "beans")


class ChatUser(FastHttpUser):
    wait_time = between(THINK_MIN_S, THINK_MAX_S)

    def on_start(self) -> None:
        self.agent = f"user-{next(_NUMBERS)}"
        self.sent = 0
        # Spread the first messages over one think time, as real sessions would be.
        gevent.sleep(random.uniform(0, THINK_MAX_S))

    @task
    def chat(self) -> None:
        text = " ".join(random.choices(_WORDS, k=6))
        with self.client.post(
            f"/v1/agents/{KIND}/{self.agent}/messages",
            json={"message": text},
            # A session's first message also creates its agent: reported apart from the
            # steady-state messages the SLO is about.
            name="message" if self.sent else "first message",
            catch_response=True,
        ) as response:
            self.sent += 1
            if response.status_code != 200:
                response.failure(f"{response.status_code}: {response.text[:200]}")
            elif self.sent > 1:
                self._record_host_added(response)

    def _record_host_added(self, response: Any) -> None:
        """Report the reply time minus the time the agent waited on its ops (the LLM call,
        as the host saw it: ``Server-Timing: ops;dur=MS``) as its own ``host-added`` entry."""
        ops_ms = _ops_ms(response.headers.get("server-timing") or "")
        if ops_ms is None:
            return
        self.environment.events.request.fire(
            request_type="HOST",
            name="host-added",
            response_time=max(0.0, response.request_meta["response_time"] - ops_ms),
            response_length=0,
            exception=None,
            context={},
        )


def _ops_ms(header: str) -> float | None:
    """The ``ops`` duration of a ``Server-Timing`` header, in ms (None if absent)."""
    for metric in header.split(","):
        name, _, params = metric.strip().partition(";")
        if name == "ops":
            for param in params.split(";"):
                key, _, value = param.strip().partition("=")
                if key == "dur":
                    return float(value)
    return None
