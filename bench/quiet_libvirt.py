"""The libvirt binding, imported with libvirt's own log output off.

The embedded driver otherwise prints a "tainted: high-privileges" warning
for every domain the baseline starts. libvirt reads the variable once, at
import; it is not left set, so the vmops service the bench starts logs as
it always does.
"""

import os

_saved = os.environ.get("LIBVIRT_LOG_OUTPUTS")
os.environ.setdefault("LIBVIRT_LOG_OUTPUTS", "4:file:/dev/null")
import libvirt  # noqa: E402

if _saved is None:
    del os.environ["LIBVIRT_LOG_OUTPUTS"]

__all__ = ["libvirt"]
