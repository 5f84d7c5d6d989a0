"""The simulator's HTTP client: one aiohttp client whose keep-alive pool holds a connection per simulated client.

aiohttp parses HTTP in C and keeps its connection pool cheap, so the simulated clients take little of the cores they
share with the server they measure; bodies go through orjson, and the loop is uvloop's where installed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from genrec.errors import GenrecError

try:  # the serve extra
    import aiohttp
    import orjson
except ImportError as e:  # pragma: no cover - depends on the install
    raise GenrecError(f"genrec simulate needs the serve extra (pip install 'genrec[serve]'): {e}") from e

# aiohttp drops a connection idle this long, before uvicorn's 5 s keep-alive timeout closes it under a request
IDLE_S = 4.0


def event_loop() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop where it is installed (the serve extra on POSIX; less CPU per request), else asyncio's."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a serve dependency on POSIX
        return None
    return uvloop.new_event_loop


class Answer:
    """An HTTP answer: status and body."""

    __slots__ = ("status_code", "content")

    def __init__(self, status_code: int, content: bytes):
        self.status_code, self.content = status_code, content

    def json(self) -> Any:
        return orjson.loads(self.content)


class Client:
    """JSON POSTs to ``base_url`` over up to ``connections`` keep-alive connections; use as ``async with``.

    A request unanswered after ``timeout`` seconds, or a connection the server refuses or drops, raises a
    GenrecError naming the URL; an answer with any status is returned (the caller counts the non-2xx ones)."""

    def __init__(self, base_url: str, connections: int, timeout: float = 60.0):
        self.base_url, self.connections, self.timeout = base_url.rstrip("/"), connections, timeout
        self.http: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Client:
        connector = aiohttp.TCPConnector(limit=self.connections, force_close=False, keepalive_timeout=IDLE_S)
        self.http = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=self.timeout),
                                             headers={"Content-Type": "application/json"})
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.http.close()

    async def post(self, path: str, body: Any) -> Answer:
        url = self.base_url + path
        try:
            async with self.http.post(url, data=orjson.dumps(body)) as r:
                return Answer(r.status, await r.read())
        except TimeoutError as e:
            raise GenrecError(f"POST {url}: no answer within {self.timeout:g} s (is the server stuck?)") from e
        except aiohttp.ClientError as e:
            raise GenrecError(f"POST {url}: {type(e).__name__}: {e}") from e
