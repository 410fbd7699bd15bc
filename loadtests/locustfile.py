"""Chat users for the density load test: each user owns one agent (``KIND/user-N``), sends a
message, waits for the reply, thinks at human pace, and repeats.

Settings come from the environment (the density harness sets them):
``ROOST_LOAD_KIND`` (default ``chat``), ``ROOST_LOAD_THINK_MIN_S`` / ``ROOST_LOAD_THINK_MAX_S``
(default 10 / 30), ``ROOST_LOAD_USER_OFFSET`` (first user number).
"""

from __future__ import annotations

import itertools
import os
import random

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
