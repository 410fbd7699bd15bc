"""The terminal chat of ``roost run`` and ``roost dev``: one agent, everything it says.

Lines typed are sent as messages (a line that parses as JSON as that value, anything else
as a string). What the agent produces is shown as it happens::

    you> hello
    agent~ hello hello hello          tokens of a streamed llm reply, as they arrive
    agent> "hello hello hello"        each reply, as the turn that made it commits
    push> "Reminder: stretch"         replies to events nobody waited on (timers, agents)
    log> info echo/local: message 1   the agent's log lines (roost dev; roost run -v)

Replies and pushes go to stdout, one JSON value a line; errors, logs and notices to
stderr. ``/quit``, ``/exit`` or the end of input leave.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from typing import Any, TextIO

import trio

from ..address import AgentAddress
from ..errors import GuestError, RoostError
from ..host import Host
from ..payload import to_json

QUIT_COMMANDS = frozenset({"/quit", "/exit"})
PROMPT = "you> "


def parse_message(text: str) -> Any:
    """A message as typed: the JSON value it spells, else the text itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


class Console:
    """Where the chat writes, safe to call from worker threads (guest logs are written on
    the thread that ran the turn). On a terminal, a line printed while the prompt waits for
    input is put above it, and the prompt shown again."""

    def __init__(self, out: TextIO | None = None, err: TextIO | None = None) -> None:
        self._out = out if out is not None else sys.stdout
        self._err = err if err is not None else sys.stderr
        self._lock = threading.RLock()
        self._prompting = False
        self._streaming = False
        try:
            self._terminal = self._out.isatty()
        except (AttributeError, ValueError):
            self._terminal = False

    # -- what the agent says -----------------------------------------------------------
    def token(self, text: str) -> None:
        with self._lock:
            if not self._streaming:
                self._above_prompt()
                self._out.write("agent~ ")
                self._streaming = True
            self._out.write(text)
            self._out.flush()

    def reply(self, value: Any) -> None:
        self._line(self._out, f"agent> {to_json(value, ensure_ascii=False)}")

    def push(self, value: Any) -> None:
        self._line(self._out, f"push> {to_json(value, ensure_ascii=False)}")

    def log(self, level: str, message: str) -> None:
        self._line(self._err, f"log> {level} {message}")

    def error(self, exc: RoostError) -> None:
        self._line(self._out, f"error: {exc}")
        if isinstance(exc, GuestError) and exc.guest_traceback:
            self._line(self._err, exc.guest_traceback.rstrip())

    def info(self, text: str) -> None:
        self._line(self._err, text)

    # -- the prompt --------------------------------------------------------------------
    def read_line(self) -> str | None:
        """One line typed, or None at the end of input. Runs on a worker thread."""
        with self._lock:
            self._end_stream()
            self._prompting = True
        try:
            return input(PROMPT)
        except EOFError:
            if sys.stdin.isatty():
                print()
            return None
        finally:
            with self._lock:
                self._prompting = False

    def _line(self, stream: TextIO, text: str) -> None:
        with self._lock:
            self._end_stream()
            self._above_prompt()
            stream.write(text + "\n")
            stream.flush()
            if self._prompting and self._terminal:
                self._out.write(PROMPT)
                self._out.flush()

    def _end_stream(self) -> None:
        if self._streaming:
            self._out.write("\n")
            self._out.flush()
            self._streaming = False

    def _above_prompt(self) -> None:
        if self._prompting and self._terminal:
            self._out.write("\r\x1b[K")


class GuestLogHandler(logging.Handler):
    """Shows the agents' log lines (the ``roost.guest`` logger) on a :class:`Console`."""

    def __init__(self, console: Console) -> None:
        super().__init__(logging.DEBUG)
        self._console = console

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._console.log(record.levelname.lower(), record.getMessage())
        except Exception:
            self.handleError(record)


async def chat(host: Host, address: AgentAddress, console: Console) -> None:
    """Chat with ``address`` until the user leaves; the agent's pushes are shown meanwhile."""
    console.info(f"chatting with {address}; /quit or end of input to leave")
    async with trio.open_nursery() as nursery:
        await nursery.start(_show_pushes, host, address, console)
        while True:
            line = await trio.to_thread.run_sync(console.read_line, abandon_on_cancel=True)
            if line is None:
                break
            text = line.strip()
            if text in QUIT_COMMANDS:
                break
            if not text:
                continue
            await send(host, address, parse_message(text), console)
        nursery.cancel_scope.cancel()


async def send(host: Host, address: AgentAddress, message: Any, console: Console) -> None:
    """Send one message and show its tokens and replies as they come."""
    shown = 0

    def on_reply(reply: Any) -> None:
        nonlocal shown
        shown += 1
        console.reply(reply)

    try:
        await host.send(address, message, on_reply=on_reply, on_token=console.token)
    except RoostError as exc:
        console.error(exc)
        return
    if not shown:
        console.info("(no replies)")


async def _show_pushes(
    host: Host,
    address: AgentAddress,
    console: Console,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    async with host.subscribe(address) as pushes:
        task_status.started()  # subscribed: no push from now on is missed
        async for message in pushes:
            console.push(message)
