"""Serial console capture and log rotation (see docs/console.md).

``process`` has an instance captured by the console process of its run
directory (``daemon``, through ``shared``; ``capture`` is the per-instance
process of older vmops), ``log`` reads what it wrote; ``rotation`` is the
two-file arithmetic; ``api`` is the seam compute uses, ``fake`` its fake.
"""

from vmops.console.layout import DEFAULT_MAX_BYTES, LogFiles
from vmops.console.log import follow, read_log, remove_logs
from vmops.console.process import (
    attach,
    capture_generation,
    capture_pid,
    poke_capture,
    release_holds,
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
    "release_holds",
    "remove_logs",
    "start_capture",
    "stop_capture",
    "wait_connected",
]
