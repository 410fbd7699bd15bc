"""Roost: a host for one-to-one AI agents as WebAssembly sandboxes.

The embedding API::

    async with open_host(HostConfig(data_dir=Path(".roost"))) as host:
        await host.deploy(Path("examples/echo/agent.toml"))
        replies = await host.send("echo/alice", "hello")
"""

from __future__ import annotations

from .address import AgentAddress as AgentAddress
from .config import HostConfig as HostConfig
from .config import LlmProvider as LlmProvider
from .config import load_config as load_config
from .core.envelope import EventTiming as EventTiming
from .core.kind import KindInfo as KindInfo
from .errors import AccessDenied as AccessDenied
from .errors import AgentBusy as AgentBusy
from .errors import AgentCoolingDown as AgentCoolingDown
from .errors import AgentError as AgentError
from .errors import AgentExists as AgentExists
from .errors import AgentUnavailable as AgentUnavailable
from .errors import AlreadyHandled as AlreadyHandled
from .errors import ApprovalDecided as ApprovalDecided
from .errors import AuthError as AuthError
from .errors import BuildError as BuildError
from .errors import CapabilityDenied as CapabilityDenied
from .errors import CapabilityError as CapabilityError
from .errors import ConfigError as ConfigError
from .errors import CpuDeadlineExceeded as CpuDeadlineExceeded
from .errors import DeployError as DeployError
from .errors import GuestAbiError as GuestAbiError
from .errors import GuestError as GuestError
from .errors import GuestTrap as GuestTrap
from .errors import IdempotencyKeyReused as IdempotencyKeyReused
from .errors import InvalidAddress as InvalidAddress
from .errors import InvalidMessage as InvalidMessage
from .errors import LeaseLost as LeaseLost
from .errors import LimitExceeded as LimitExceeded
from .errors import ManifestError as ManifestError
from .errors import MemoryLimitExceeded as MemoryLimitExceeded
from .errors import MessageTooLarge as MessageTooLarge
from .errors import Overloaded as Overloaded
from .errors import OwnedElsewhere as OwnedElsewhere
from .errors import ProviderError as ProviderError
from .errors import QuotaExceeded as QuotaExceeded
from .errors import ReplyTooDeep as ReplyTooDeep
from .errors import RoostError as RoostError
from .errors import StorageError as StorageError
from .errors import UnknownAgent as UnknownAgent
from .errors import UnknownApproval as UnknownApproval
from .errors import UnknownKind as UnknownKind
from .host import AgentStatus as AgentStatus
from .host import ApprovalInfo as ApprovalInfo
from .host import Host as Host
from .host import open_host as open_host
from .limits import Limits as Limits
from .manifest import Manifest as Manifest
from .manifest import load_manifest as load_manifest
from .telemetry import HostStatistics as HostStatistics
