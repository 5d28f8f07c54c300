"""Datagraph: distributed asynchronous dataflows on Valkey streams."""

from fast_depends import Depends

# Importing registration installs the hooks that publish this process's processors.
from . import registration as _registration  # noqa: F401
from .executors import Executor, LocalExecutor
from .flow import Flow
from .io import IO, IOBatch, IOVal
from .processor import Processor
from .supervisor import Supervisor

__all__ = [
    "IO",
    "Depends",
    "Executor",
    "Flow",
    "IOBatch",
    "IOVal",
    "LocalExecutor",
    "Processor",
    "Supervisor",
]

__version__ = "0.1.0"
