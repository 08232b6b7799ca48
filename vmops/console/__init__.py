"""Serial console capture and log rotation (see docs/console.md).

``process`` starts and stops the per-VM capture process (``capture``),
``log`` reads what it wrote; ``rotation`` is the two-file arithmetic.
"""

from vmops.console.layout import DEFAULT_MAX_BYTES, LogFiles
from vmops.console.log import follow, read_log, remove_logs
from vmops.console.process import (
    attach,
    capture_generation,
    capture_pid,
    poke_capture,
    start_capture,
    stop_capture,
    wait_connected,
)

__all__ = [
    "DEFAULT_MAX_BYTES",
    "LogFiles",
    "attach",
    "capture_generation",
    "capture_pid",
    "follow",
    "poke_capture",
    "read_log",
    "remove_logs",
    "start_capture",
    "stop_capture",
    "wait_connected",
]
