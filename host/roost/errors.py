"""Every error Roost raises, in one tree.

::

    RoostError
    ├── ConfigError              bad settings or manifest; fix the input, retrying will not help
    │   ├── ManifestError        a manifest that does not parse or validate
    │   └── DeployError          a component that cannot be deployed under its manifest
    ├── BuildError               an agent that does not compile to a component
    ├── AgentError               something went wrong for one agent; its neighbours are unaffected
    │   ├── UnknownKind          no kind of that name is deployed
    │   ├── InvalidAddress       a kind or id with characters an address may not hold
    │   ├── InvalidMessage       an event payload that msgpack cannot carry
    │   │   ├── MessageTooLarge  a request body over the size limit
    │   │   └── IdempotencyKeyReused  a key reused for a different message
    │   ├── UnknownAgent         an operation needs an agent's committed state and it has none
    │   ├── UnknownApproval      no approval of that id is waiting for the agent
    │   ├── ApprovalDecided      an approval decided already cannot be decided otherwise
    │   ├── AgentExists          a fork target that already has state
    │   ├── GuestError           the guest failed a turn: it raised, trapped, or broke a limit
    │   │   ├── GuestTrap        the guest raised or trapped (carries the guest traceback)
    │   │   ├── CpuDeadlineExceeded  the turn ran past the kind's CPU deadline
    │   │   ├── MemoryLimitExceeded  the guest ran out of its linear-memory cap
    │   │   ├── LimitExceeded    state, kv or reply bytes over the kind's limit
    │   │   │   └── ReplyTooDeep a reply nested deeper than a JSON reply may be
    │   │   └── GuestAbiError    the guest broke the roost:agent ABI contract
    │   ├── AgentBusy            the agent's mailbox is full; retry after a short wait
    │   │   └── AgentCoolingDown the agent keeps running past its CPU deadline: refused a while
    │   └── AgentUnavailable     the agent was stopped (host shutting down); retry elsewhere/later
    │       └── OwnedElsewhere   another live host holds the agent's lease; send it there
    ├── CapabilityError          a host call failed for a reason the guest can see
    │   ├── CapabilityDenied     the call is outside the kind's grant
    │   ├── QuotaExceeded        the call would pass a per-agent quota
    │   └── ProviderError        a model provider (or MCP server) failed; ``retryable`` says
    │                            whether the same call may succeed later
    ├── StorageError             the state store failed; the turn was not committed; retry helps
    │   ├── AlreadyHandled       the delivery a commit handles was handled already, or the
    │   │                        op whose result it hands over was finished already
    │   └── LeaseLost            the host no longer holds the agent's lease; nothing was written
    ├── Overloaded               the host is at capacity; retry after ``retry_after_s``
    └── AuthError                a request's credentials are missing, malformed or expired
        └── AccessDenied         valid credentials, but not for this call or this agent

Errors that carry ``retryable = True`` are ones where the same request may succeed later.
"""

from __future__ import annotations


class RoostError(Exception):
    """Base class of every error Roost raises on purpose."""

    retryable: bool = False


class ConfigError(RoostError):
    """Raised when settings are invalid. Fix the configuration; retrying will not help."""


class ManifestError(ConfigError):
    """Raised when a kind's manifest cannot be read or does not validate."""


class DeployError(ConfigError):
    """Raised when a component cannot be deployed under its manifest (e.g. ungranted imports)."""


class BuildError(RoostError):
    """Raised by ``roost build`` when the agent source does not compile to a component."""


class AgentError(RoostError):
    """An error that concerns one agent only."""

    def __init__(self, message: str, *, address: str | None = None) -> None:
        super().__init__(message)
        self.address = address


class UnknownKind(AgentError):
    """Raised when an event names a kind that is not deployed. Deploy it first."""


class InvalidAddress(AgentError):
    """Raised when a kind or agent id is empty, too long or holds characters not allowed."""


class InvalidMessage(AgentError):
    """Raised when a message cannot be encoded as msgpack (e.g. a set or an object).
    Send None, bool, int, float, str, bytes, lists and dicts."""


class MessageTooLarge(InvalidMessage):
    """Raised when a request body is larger than ``max_body_bytes``. Send less."""


class IdempotencyKeyReused(InvalidMessage):
    """Raised when an idempotency key that answered one message comes with another. Use a
    new key for a new message."""


class UnknownAgent(AgentError):
    """Raised when an operation (fork) needs an agent's committed state and there is none."""


class UnknownApproval(AgentError):
    """Raised when deciding an approval the agent never asked for (or that was erased)."""


class ApprovalDecided(AgentError):
    """Raised when an approval decided one way is decided the other way. The first
    decision stands."""


class AgentExists(AgentError):
    """Raised when forking onto an agent id that already has state. Pick a new id."""


class GuestError(AgentError):
    """The guest failed a turn. Nothing from the turn was committed; the agent keeps
    serving from its last committed state. Retrying the same event usually fails the same way.
    """

    def __init__(
        self, message: str, *, address: str | None = None, guest_traceback: str = ""
    ) -> None:
        super().__init__(message, address=address)
        self.guest_traceback = guest_traceback


class GuestTrap(GuestError):
    """Raised when the guest raised an exception or trapped during a turn."""


class CpuDeadlineExceeded(GuestError):
    """Raised when a turn ran longer than the kind's ``cpu_deadline_ms``."""


class MemoryLimitExceeded(GuestError):
    """Raised when the guest tried to grow past the kind's ``max_memory_bytes``."""


class LimitExceeded(GuestError):
    """Raised when a turn's state, kv or reply bytes exceed the kind's limits."""


class ReplyTooDeep(LimitExceeded):
    """Raised when a reply nests lists and maps more than 64 levels deep: it could not be
    sent as JSON. Nothing of the turn was committed."""


class GuestAbiError(GuestError):
    """Raised when the guest returns values that break the roost:agent contract."""


class AgentBusy(AgentError):
    """Raised when the agent's mailbox is full. Retry after a short wait."""

    retryable = True


class AgentCoolingDown(AgentBusy):
    """Raised when an agent's turns ran past the kind's CPU deadline recently: its events
    are refused for a cool-down that doubles each time it does it again. Retry after
    ``retry_after_s``."""

    def __init__(self, message: str, *, address: str | None = None, retry_after_s: float) -> None:
        super().__init__(message, address=address)
        self.retry_after_s = retry_after_s


class AgentUnavailable(AgentError):
    """Raised when the agent was stopped before handling the event (host shutting down)."""

    retryable = True


class OwnedElsewhere(AgentUnavailable):
    """Raised when another live host holds the agent's lease (several hosts share a store):
    the event must be handled there. ``owner_url`` is where that host serves, when it said;
    the host forwards events there itself, so callers see this only when it could not."""

    def __init__(
        self,
        message: str,
        *,
        address: str | None = None,
        owner: str = "",
        owner_url: str | None = None,
    ) -> None:
        super().__init__(message, address=address)
        self.owner = owner
        self.owner_url = owner_url


class CapabilityError(RoostError):
    """A host call the guest made failed in a way the guest is told about."""


class CapabilityDenied(CapabilityError):
    """Raised when a call is outside the kind's grant; the message names the grant needed."""


class QuotaExceeded(CapabilityError):
    """Raised when a call would pass a per-agent quota or budget."""


class ProviderError(CapabilityError):
    """Raised when a provider the host called for an agent failed: an LLM provider that
    answered an error (before or in the middle of a stream), timed out, could not be
    reached, or sent an answer that is not one; an MCP server likewise. ``status`` is the
    provider's HTTP status (None when there was no answer), ``code`` its error code,
    ``retryable`` whether the same call may succeed later (429, 5xx, timeouts, broken
    connections)."""

    def __init__(
        self,
        message: str,
        *,
        provider: str | None = None,
        status: int | None = None,
        code: str | None = None,
        retryable: bool = False,
        kind: str = "provider_error",
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        """The provider's ``Retry-After``, when it sent one."""
        self.provider = provider
        self.status = status
        self.code = code
        self.retryable = retryable
        self.kind = kind
        """What went wrong, for metrics and for the guest: ``http_error``, ``timeout``,
        ``unreachable``, ``stream_error``, ``truncated``, ``malformed``."""

    def details(self) -> dict[str, object]:
        """What the guest gets besides the message (docs/capabilities.md, "Op errors")."""
        return {
            "type": self.kind,
            "provider": self.provider,
            "status": self.status,
            "code": self.code,
            "retryable": self.retryable,
            "retry_after_s": self.retry_after_s,
        }


class StorageError(RoostError):
    """Raised when the state store fails. The turn was not committed; a retry may succeed."""

    retryable = True


class AlreadyHandled(StorageError):
    """Raised when a commit names a delivery as handled that is gone or was moved since it
    was read: another commit handled that occurrence; or names a continuation-form op as
    finished whose pending row is gone: its result was handed over already. Nothing of
    the commit was written."""

    retryable = False


class LeaseLost(StorageError):
    """Raised when a commit carries a fencing token that is no longer the agent's lease: the
    lease expired (the host was paused or cut off) or another host took it over. Nothing of
    the commit was written; the agent is now served by its new owner, so a retry helps."""


class Overloaded(RoostError):
    """Raised when the host is at capacity (resident cap with no idle agent to evict,
    or the global in-flight limit). Retry after ``retry_after_s`` seconds."""

    retryable = True

    def __init__(self, message: str, *, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class AuthError(RoostError):
    """Raised by the HTTP API when a request's credentials are missing, malformed or
    expired. Send a valid bearer token (``roost token``, or the admin token)."""


class AccessDenied(AuthError):
    """Raised when the credentials are valid but for another agent, or the call needs the
    admin token. Retrying with the same credentials will not help."""
