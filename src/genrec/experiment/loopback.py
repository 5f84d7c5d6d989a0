"""A small keep-alive HTTP/1.1 JSON client on asyncio streams, for the simulator's clients on loopback.

httpx spends several times the CPU of the request itself per call (connection-pool bookkeeping, and a failed
``import sniffio`` per call where sniffio is absent); the simulated clients share the machine's cores with the
server they measure, so each client here holds one connection of its own and speaks just enough HTTP/1.1 to post
JSON and read the answer (``Content-Length`` or chunked bodies). A dropped connection is reopened once per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import Callable
from typing import Any

try:  # the serve extra: several times faster than the json module
    import orjson
except ImportError:  # pragma: no cover - orjson is a serve dependency
    orjson = None


def event_loop() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop where it is installed (the serve extra; less CPU per request), else asyncio's."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a serve dependency on POSIX
        return None
    return uvloop.new_event_loop


def dumps(obj: Any) -> bytes:
    if orjson is not None:
        return orjson.dumps(obj)
    return json.dumps(obj, separators=(",", ":")).encode()


def loads(body: bytes) -> Any:
    return orjson.loads(body) if orjson is not None else json.loads(body)


class ProtocolError(ValueError):
    """The peer's answer is not HTTP/1.1."""


class Answer:
    """An HTTP answer: status and body."""

    __slots__ = ("status_code", "content")

    def __init__(self, status_code: int, content: bytes):
        self.status_code, self.content = status_code, content

    def json(self) -> Any:
        return loads(self.content)


class Connection:
    """One keep-alive connection to ``host:port`` (opened on first use)."""

    def __init__(self, host: str, port: int, timeout: float = 60.0):
        self.host, self.port, self.timeout = host, port, timeout
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def _open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    async def post(self, path: str, body: Any) -> Answer:
        """POST ``body`` as JSON; a connection the server closed while idle is reopened and the request sent again
        (nothing was read from it, so the server never saw that request)."""
        payload = dumps(body)
        head = (f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(payload)}\r\n\r\n").encode()
        for attempt in (0, 1):
            fresh = self.writer is None
            if fresh:
                await self._open()
            try:
                self.writer.write(head + payload)
                return await asyncio.wait_for(self._answer(), self.timeout)
            except (ConnectionError, asyncio.IncompleteReadError) as e:
                await self.close()
                if fresh or attempt == 1 or (isinstance(e, asyncio.IncompleteReadError) and e.partial):
                    raise
        raise AssertionError("unreachable")

    async def _answer(self) -> Answer:
        status_line = await self.reader.readuntil(b"\r\n")
        parts = status_line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
            raise ProtocolError(f"not an HTTP/1.1 answer: {status_line[:80]!r}")
        status = int(parts[1])
        length, chunked, close = None, False, False
        while (line := await self.reader.readuntil(b"\r\n")) != b"\r\n":
            name, _, value = line.partition(b":")
            name, value = name.strip().lower(), value.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value
            elif name == b"connection":
                close = value == b"close"
        if chunked:
            body = await self._chunks()
        elif length is not None:
            body = await self.reader.readexactly(length)
        else:  # no length: the body runs to the end of the connection
            body, close = await self.reader.read(), True
        if close:
            await self.close()
        return Answer(status, body)

    async def _chunks(self) -> bytes:
        out = bytearray()
        while True:
            size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                while await self.reader.readuntil(b"\r\n") != b"\r\n":  # trailers
                    pass
                return bytes(out)
            out += await self.reader.readexactly(size)
            await self.reader.readexactly(2)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await self.writer.wait_closed()
        self.reader = self.writer = None
