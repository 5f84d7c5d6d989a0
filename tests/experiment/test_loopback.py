"""The simulator's HTTP client: bodies sent and read back (length-delimited and chunked), a connection the server
closed between requests reopened, a server that is not HTTP refused."""

from __future__ import annotations

import asyncio
import json

import pytest

from genrec.experiment.loopback import Connection, ProtocolError


async def _server(handler) -> tuple[asyncio.AbstractServer, int]:
    srv = await asyncio.start_server(handler, "127.0.0.1", 0)
    return srv, srv.sockets[0].getsockname()[1]


async def _read_request(reader: asyncio.StreamReader) -> dict:
    length = 0
    while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return json.loads(await reader.readexactly(length))


def test_posts_json_and_reads_length_and_chunked_answers_on_one_connection():
    opened = []

    async def handler(reader, writer):
        opened.append(1)
        n = 0
        while True:
            try:
                body = await _read_request(reader)
            except asyncio.IncompleteReadError:
                break
            out = json.dumps({"echo": body, "n": n}).encode()
            if n % 2 == 0:
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(out), out))
            else:  # the same answer in two chunks, with a 4xx status
                half = len(out) // 2
                writer.write(b"HTTP/1.1 422 Unprocessable\r\nTransfer-Encoding: chunked\r\n\r\n"
                             b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n" % (half, out[:half], len(out) - half, out[half:]))
            await writer.drain()
            n += 1
        writer.close()

    async def main():
        srv, port = await _server(handler)
        c = Connection("127.0.0.1", port)
        answers = [await c.post("/x", {"i": i, "ids": ["a", "b"]}) for i in range(4)]
        await c.close()
        srv.close()
        return answers

    answers = asyncio.run(main())
    assert [a.status_code for a in answers] == [200, 422, 200, 422]
    assert [a.json() for a in answers] == [{"echo": {"i": i, "ids": ["a", "b"]}, "n": i} for i in range(4)]
    assert len(opened) == 1  # kept alive


def test_a_connection_closed_by_the_server_is_reopened():
    async def handler(reader, writer):  # answers one request, then closes (as an idle timeout would)
        body = await _read_request(reader)
        out = json.dumps(body).encode()
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(out), out))
        await writer.drain()
        writer.close()

    async def main():
        srv, port = await _server(handler)
        c = Connection("127.0.0.1", port)
        first = await c.post("/x", {"a": 1})
        await asyncio.sleep(0.05)
        second = await c.post("/x", {"a": 2})
        await c.close()
        srv.close()
        return first, second

    first, second = asyncio.run(main())
    assert first.json() == {"a": 1} and second.json() == {"a": 2}


def test_an_answer_that_is_not_http_is_an_error():
    async def handler(reader, writer):
        await _read_request(reader)
        writer.write(b"SSH-2.0-OpenSSH\r\n\r\n")
        await writer.drain()
        writer.close()

    async def main():
        srv, port = await _server(handler)
        c = Connection("127.0.0.1", port)
        try:
            await c.post("/x", {})
        finally:
            await c.close()
            srv.close()

    with pytest.raises(ProtocolError, match="not an HTTP"):
        asyncio.run(main())
