"""The simulator's HTTP client against a small aiohttp server: JSON posted and read back over kept-alive
connections, any status returned to the caller, and a server that is stuck or gone named in the error."""

from __future__ import annotations

import asyncio
import json
import socket

import pytest

pytest.importorskip("aiohttp")
from aiohttp import web  # noqa: E402

from genrec.errors import GenrecError  # noqa: E402
from genrec.experiment.loopback import Client, event_loop  # noqa: E402


async def _serve(routes: web.RouteTableDef) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.add_routes(routes)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}"


async def _post_once(routes: web.RouteTableDef, path: str, timeout: float, before_cleanup=None) -> None:
    """Serve ``routes``, POST {} to ``path`` once on a one-connection Client, then stop the server (after
    ``before_cleanup``, e.g. releasing a handler that is still waiting)."""
    runner, url = await _serve(routes)
    try:
        async with Client(url, connections=1, timeout=timeout) as c:
            await c.post(path, {})
    finally:
        if before_cleanup is not None:
            before_cleanup()
        await runner.cleanup()


def _run(coro):
    with asyncio.Runner(loop_factory=event_loop()) as r:
        return r.run(coro)


def test_posts_json_and_reads_answers_of_any_status_on_kept_alive_connections():
    routes, peers = web.RouteTableDef(), set()

    @routes.post("/echo")
    async def echo(request: web.Request) -> web.Response:
        peers.add(request.transport.get_extra_info("peername"))
        body = await request.json()
        assert request.content_type == "application/json"
        return web.json_response({"echo": body}, status=200 if body["i"] % 2 == 0 else 422)

    async def main():
        runner, url = await _serve(routes)
        try:
            async with Client(url, connections=2, timeout=10) as c:
                return [await c.post("/echo", {"i": i, "ids": ["a", "é"]}) for i in range(6)]
        finally:
            await runner.cleanup()

    answers = _run(main())
    assert [a.status_code for a in answers] == [200, 422] * 3
    assert [a.json() for a in answers] == [{"echo": {"i": i, "ids": ["a", "é"]}} for i in range(6)]
    assert json.loads(answers[0].content) == answers[0].json()
    assert len(peers) == 1  # one request at a time: the same connection throughout


def test_concurrent_clients_share_the_pool_up_to_its_size():
    routes, peers, inflight, peak = web.RouteTableDef(), set(), [0], [0]

    @routes.post("/slow")
    async def slow(request: web.Request) -> web.Response:
        peers.add(request.transport.get_extra_info("peername"))
        inflight[0] += 1
        peak[0] = max(peak[0], inflight[0])
        await asyncio.sleep(0.02)
        inflight[0] -= 1
        return web.json_response(await request.json())

    async def main():
        runner, url = await _serve(routes)
        try:
            async with Client(url, connections=3, timeout=10) as c:
                return await asyncio.gather(*(c.post("/slow", {"n": n}) for n in range(12)))
        finally:
            await runner.cleanup()

    answers = _run(main())
    assert sorted(a.json()["n"] for a in answers) == list(range(12))
    assert peak[0] == 3 and len(peers) == 3  # never more connections than the pool holds, and they are reused


def test_a_stuck_server_times_out_with_the_url_in_the_error():
    routes = web.RouteTableDef()
    release = asyncio.Event()

    @routes.post("/stuck")
    async def stuck(request: web.Request) -> web.Response:
        await release.wait()  # set only after the client gave up
        return web.json_response({})

    with pytest.raises(GenrecError, match=r"POST http://127\.0\.0\.1:\d+/stuck: no answer within 0\.2 s"):
        _run(_post_once(routes, "/stuck", timeout=0.2, before_cleanup=release.set))


def test_a_server_that_is_gone_or_drops_the_connection_is_a_clear_error():
    routes = web.RouteTableDef()

    @routes.post("/drop")
    async def drop(request: web.Request) -> web.Response:
        request.transport.close()  # the server process died mid-request
        return web.json_response({})

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]  # nothing listens here once the socket is closed

    async def refused():
        async with Client(f"http://127.0.0.1:{closed}", connections=1, timeout=5) as c:
            await c.post("/v1/recommend", {})


    with pytest.raises(GenrecError, match=rf"POST http://127\.0\.0\.1:{closed}/v1/recommend: ClientConnectorError"):
        _run(refused())
    with pytest.raises(GenrecError, match=r"/drop: ServerDisconnectedError"):
        _run(_post_once(routes, "/drop", timeout=5))
