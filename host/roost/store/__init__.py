"""Durable agent state: the :class:`StateStore` protocol, its async adapter and SQLite."""

from .async_store import AsyncStore as AsyncStore
from .protocol import AgentExport as AgentExport
from .protocol import AgentRecord as AgentRecord
from .protocol import AgentSummary as AgentSummary
from .protocol import Approval as Approval
from .protocol import ApprovalDecision as ApprovalDecision
from .protocol import Commit as Commit
from .protocol import DeadLetter as DeadLetter
from .protocol import Delivery as Delivery
from .protocol import FailedDelivery as FailedDelivery
from .protocol import ForkResult as ForkResult
from .protocol import Handled as Handled
from .protocol import IdempotencyRecord as IdempotencyRecord
from .protocol import JournalEntry as JournalEntry
from .protocol import PendingOp as PendingOp
from .protocol import StateStore as StateStore
from .protocol import TurnReads as TurnReads
from .protocol import Usage as Usage
from .sqlite import SqliteStore as SqliteStore
from .sqlite import SqliteStoreStatistics as SqliteStoreStatistics
from .sqlite import open_sqlite_store as open_sqlite_store
