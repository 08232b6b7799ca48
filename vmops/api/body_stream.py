"""A request body read as a stream: for the few routes that take more than
the JSON bodies' 1 MiB (an image upload, ``PUT /image/v2/images/{id}/file``).

The body comes with a Content-Length or chunked (``Transfer-Encoding:
chunked``, as Tempest and curl send an upload of unknown size). Each read
has its own time limit, not the whole body: a 10 GiB upload may take an
hour, but it may not stall. How much may be read is the route's business
(an upload is bounded by ``image_import_max_bytes``); the chunk framing is
bounded here so a hostile client cannot make us buffer a size line forever.
"""

from __future__ import annotations

import io
from collections.abc import Callable

from vmops.errors import RequestBodyIncomplete, RequestBodyTimeout

READ_SIZE = 1 << 20
MAX_LINE = 1024  # a chunk-size line (with extensions) or a trailer line
MAX_TRAILERS = 64
_HEX = frozenset("0123456789abcdefABCDEF")


class BodyStream:
    """Reads a request body: ``read()`` gives what has arrived, b"" at the end.

    ``arm(seconds)`` sets the deadline of the socket read that follows
    (the server's deadline reader); every read is armed with ``timeout``.
    """

    def __init__(self, rfile: io.BufferedIOBase, length: int | None, timeout: float,
                 arm: Callable[[float], None]) -> None:
        self.rfile = rfile
        self.length = length  # None: chunked
        self.timeout = timeout
        self._arm = arm
        self.received = 0
        self._chunk_left = 0  # chunked: bytes left in the current chunk
        self.finished = length == 0
        self.broken = False  # a read failed: the connection cannot be trusted

    def read(self, size: int = READ_SIZE) -> bytes:
        if self.finished:
            return b""
        if self.length is not None:
            data = self._read_some(min(size, self.length - self.received))
            if not data:
                self.broken = True
                raise RequestBodyIncomplete(reason=f"the client sent {self.received} of the "
                                            f"{self.length} bytes of its Content-Length")
            self.received += len(data)
            self.finished = self.received == self.length
            return data
        return self._read_chunked(size)

    def drain(self, most: int) -> bool:
        """Read and drop what is left, up to ``most`` bytes; True if the
        body ended (the connection can carry another request)."""
        if self.broken or (self.length is not None and self.length - self.received > most):
            return self.finished
        dropped = 0
        try:
            while not self.finished and dropped <= most:
                dropped += len(self.read(min(READ_SIZE, most - dropped + 1)))
        except (RequestBodyIncomplete, RequestBodyTimeout, OSError):
            return False
        return self.finished

    # -- chunked (RFC 9112 section 7.1) ----------------------------------------

    def _read_chunked(self, size: int) -> bytes:
        if self._chunk_left == 0:
            self._chunk_left = self._chunk_size()
            if self._chunk_left == 0:
                self._read_trailers()
                self.finished = True
                return b""
        data = self._read_some(min(size, self._chunk_left))
        if not data:
            self.broken = True
            raise RequestBodyIncomplete(reason=f"the client stopped in the middle of a chunk, "
                                        f"after {self.received} bytes")
        self.received += len(data)
        self._chunk_left -= len(data)
        if self._chunk_left == 0:
            self._expect_crlf()
        return data

    def _chunk_size(self) -> int:
        line = self._line("a chunk size")
        digits = line.split(b";", 1)[0].strip().decode("latin-1")
        if not digits or len(digits) > 15 or not set(digits) <= _HEX:
            self.broken = True
            raise RequestBodyIncomplete(reason=f"bad chunk size line {line[:40]!r}")
        return int(digits, 16)

    def _expect_crlf(self) -> None:
        if self._line("the end of a chunk") != b"":
            self.broken = True
            raise RequestBodyIncomplete(reason="a chunk is longer than its size line says")

    def _read_trailers(self) -> None:
        for _ in range(MAX_TRAILERS):
            if self._line("a trailer") == b"":
                return
        self.broken = True
        raise RequestBodyIncomplete(reason=f"more than {MAX_TRAILERS} trailer lines")

    def _line(self, what: str) -> bytes:
        self._arm(self.timeout)
        line = self._guard(lambda: self.rfile.readline(MAX_LINE + 1))
        if not line.endswith(b"\n"):
            self.broken = True
            if len(line) > MAX_LINE:
                raise RequestBodyIncomplete(reason=f"{what} line is over {MAX_LINE} bytes")
            raise RequestBodyIncomplete(reason=f"the client went away before {what}, after "
                                        f"{self.received} bytes")
        return line.rstrip(b"\r\n")

    def _read_some(self, size: int) -> bytes:
        self._arm(self.timeout)
        return self._guard(lambda: self.rfile.read1(size))

    def _guard(self, read: Callable[[], bytes]) -> bytes:
        try:
            return read()
        except TimeoutError:
            self.broken = True
            raise RequestBodyTimeout(seconds=self.timeout) from None
        except (ConnectionResetError, BrokenPipeError):
            self.broken = True
            raise RequestBodyIncomplete(reason=f"the client went away after {self.received} "
                                        "bytes") from None
