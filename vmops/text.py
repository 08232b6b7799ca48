"""Text that came from outside (URLs, faults, names) made safe to show.

A URL or a server's answer may carry CR/LF (an extra line in vmops.log),
ESC (terminal escape sequences in ``vmops image show``) or bidirectional
overrides (text that reads differently than it is). :func:`escape_controls`
turns each into a visible ``\\xNN``/``\\uNNNN`` escape, so a value is shown
as one line of what it really contains.
"""

from __future__ import annotations

import re

# C0 controls, DEL, C1 controls, and the Unicode bidi embeddings, overrides
# and isolates (U+202A..U+202E, U+2066..U+2069).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape_controls(text: str) -> str:
    """``text`` with every control or bidi-override character escaped."""
    return _UNSAFE.sub(_escape, text)


def has_controls(text: str) -> bool:
    return _UNSAFE.search(text) is not None
