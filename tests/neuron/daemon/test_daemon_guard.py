"""Attacks on the neuron's request path, against a real daemon on 127.0.0.1: a huge prompt, a
burst of tokenizations, a client that never reads, one key taking every slot, trickled headers
and bodies, too many connections, odd bytes in headers, deep nesting, made-up model names."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from daemon_rig import (
    AUTH,
    CharTokenizer,
    NeuronFactory,
    Rig,
    chat_body,
    until,
    worker_events,
    write_tokenizer,
)
from daemon_rig import start_neuron as start_neuron  # the fixture

from helexa.neuron.tokenizer import ChatTokenizer


async def loaded(rig: Rig, fake: dict[str, Any] | None = None, **spec: Any) -> Path:
    d = rig.model("m", fake)
    r = await rig.load(d, **spec)
    assert r.status_code == 200, r.text
    return d


def port_of(rig: Rig) -> int:
    return int(rig.url.rsplit(":", 1)[1])


async def raw(rig: Rig, data: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    r, w = await asyncio.open_connection("127.0.0.1", port_of(rig))
    if data:
        w.write(data)
        await w.drain()
    return r, w


async def read_reply(r: asyncio.StreamReader) -> tuple[int, bytes]:
    """Status and body of one Content-Length reply."""
    async with asyncio.timeout(10):
        head = await r.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        return status, await r.readexactly(length)


async def closed_by_server(r: asyncio.StreamReader, within: float = 10) -> bool:
    """True once the server closes the connection (EOF or reset) within `within` seconds."""
    try:
        async with asyncio.timeout(within):
            while await r.read(65536):
                pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        pass
    return True


def request(path: str, body: bytes = b"", extra: bytes = b"", method: str = "POST") -> bytes:
    auth = AUTH["Authorization"].encode()
    head = f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n".encode()
    head += b"Authorization: " + auth + b"\r\n" + extra
    return head + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body


class CountingTokenizer(CharTokenizer):
    """CharTokenizer that counts calls and can be held mid-tokenization by a gate."""

    calls = 0
    gate: threading.Event | None = None

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        type(self).calls += 1
        if self.gate is not None:
            self.gate.wait(10)
        return super().encode(text, add_special_tokens)


# -- item 1: a huge prompt is refused by its size, before any tokenization ------------------


async def test_8mib_prompt_is_refused_by_bytes_and_health_keeps_answering(
    start_neuron: NeuronFactory,
) -> None:
    CountingTokenizer.calls = 0
    rig = await start_neuron(tokenizer_for=CountingTokenizer, max_body_mb=64)
    await loaded(rig)
    big = json.dumps(chat_body("local/m", "x" * (8 << 20))).encode()

    async def huge() -> tuple[int, bytes]:
        r, w = await raw(rig, request("/v1/chat/completions", big))
        try:
            return await read_reply(r)
        finally:
            w.close()

    task = asyncio.create_task(huge())
    worst = 0.0
    while not task.done():
        t0 = time.monotonic()
        h = await rig.client.get("/health")
        worst = max(worst, time.monotonic() - t0)
        assert h.status_code == 200
    status, body = await task
    assert status == 400, body[:300]
    err = json.loads(body)["error"]
    assert err["code"] == "context_length_exceeded" and "bytes" in err["message"]
    assert CountingTokenizer.calls == 0  # refused before the tokenizer saw a byte of it
    assert worst < 1.0  # generous: the old freeze was ~10 s

    # a chunked body (no Content-Length) is refused by its size too, and /tokenize likewise
    async def chunks() -> Any:
        for i in range(0, len(big), 1 << 20):
            yield big[i : i + (1 << 20)]

    r = await rig.client.post("/v1/chat/completions", content=chunks())
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    tok = json.dumps({"model": "local/m", "prompt": "y" * (8 << 20)}).encode()
    r = await rig.client.post("/tokenize", content=tok)
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    assert CountingTokenizer.calls == 0
    # an ordinary prompt still goes through
    r = await rig.client.post("/v1/chat/completions", json=chat_body("local/m"))
    assert r.status_code == 200, r.text


async def test_an_embeddings_input_over_the_byte_cap_is_refused_untokenized(
    start_neuron: NeuronFactory,
) -> None:
    CountingTokenizer.calls = 0
    rig = await start_neuron(tokenizer_for=CountingTokenizer, max_prompt_tokens=100)
    await loaded(rig)
    body = {"model": "local/m", "input": ["short", "y" * 3201]}  # cap: 100 x 32 bytes
    r = await rig.client.post("/v1/embeddings", json=body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == "context_length_exceeded" and err["max_bytes"] == 3200
    assert CountingTokenizer.calls == 0


async def test_a_prompt_under_the_byte_cap_is_tokenized_off_the_event_loop(
    start_neuron: NeuronFactory,
) -> None:
    """The real tokenizer on a ~3 MB prompt: before, `Tokenizer.encode` held the GIL for all of
    it (~2.5 s here), so even from a thread it froze /health; now the loop keeps turning."""
    rig = await start_neuron(tokenizer_for=ChatTokenizer, max_prompt_tokens=100_000)
    d = rig.model("m")
    write_tokenizer(d)
    assert (await rig.load(d)).status_code == 200
    body = json.dumps(chat_body("local/m", "hello world, 123 " * 180_000)).encode()
    assert len(body) < rig.neuron.max_prompt_bytes
    task = asyncio.create_task(rig.client.post("/v1/chat/completions", content=body))
    worst = 0.0
    while not task.done():
        t0 = time.monotonic()
        assert (await rig.client.get("/health")).status_code == 200
        worst = max(worst, time.monotonic() - t0)
    r = await task
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    assert "tokens" in r.json()["error"]["message"]  # it was tokenized, then refused
    assert worst < 1.0  # generous: a GIL-holding encode stalls it for seconds


async def test_tokenizations_are_bounded_and_the_overflow_gets_429(
    start_neuron: NeuronFactory,
) -> None:
    CountingTokenizer.calls = 0
    gate = threading.Event()
    CountingTokenizer.gate = gate
    try:
        rig = await start_neuron(
            tokenizer_for=CountingTokenizer, max_tokenizations=2, tokenize_queue=1
        )
        await loaded(rig)
        body = {"model": "local/m", "prompt": "count me"}
        held = [asyncio.create_task(rig.client.post("/tokenize", json=body)) for _ in range(3)]
        gated = rig.neuron.tokenize
        await until(lambda: gated.running == 2 and gated.waiting == 1)
        r = await rig.client.post("/tokenize", json=body)
        assert r.status_code == 429, r.text
        assert r.json()["error"]["code"] == "rate_limit_exceeded" and "retry-after" in r.headers
        h = await rig.client.get("/health")  # the loop is free while tokenizers are busy
        assert h.status_code == 200
        gate.set()
        for t in held:
            assert (await t).status_code == 200
        assert CountingTokenizer.calls == 3
    finally:
        CountingTokenizer.gate = None
        gate.set()


# -- item 4: a client that never reads; one key taking every slot ----------------------------


async def test_a_client_that_never_reads_loses_its_stream_and_frees_the_slot(
    start_neuron: NeuronFactory,
) -> None:
    rig = await start_neuron(write_timeout_secs=0.5, admission={"max_wait_secs": 15})
    piece = "z" * 65536
    d = await loaded(rig, fake={"reply": {"pieces": [piece] * 400}}, max_in_flight=1)
    body = json.dumps(chat_body("local/m", stream=True, max_tokens=1000)).encode()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port_of(rig)))
    _, w = await asyncio.open_connection(sock=sock)
    w.transport.pause_reading()  # this client reads nothing
    w.write(request("/v1/chat/completions", body))
    await w.drain()
    await until(lambda: (d / "last_generate.json").exists())  # its reply plan is read
    # another user's request gets the slot once the stuck stream is cut, not after 15 s
    (d / "fake.json").write_text(json.dumps({"reply": {"pieces": ["ok"]}}))
    r2 = await rig.client.post("/v1/chat/completions", json=chat_body("local/m"))
    assert r2.status_code == 200, r2.text
    await until(lambda: any(e.startswith("cancel") for e in worker_events(d)))
    w.close()


async def test_one_principal_cannot_take_every_slot(start_neuron: NeuronFactory) -> None:
    rig = await start_neuron(admission={"max_per_principal": 1})
    d = await loaded(rig, fake={"reply": {"pieces": ["a"], "first_delay": 30}}, max_in_flight=4)
    k1 = {"x-helexa-key-id": "key_1", "x-helexa-account-id": "acct"}
    first = asyncio.create_task(
        rig.client.post("/v1/chat/completions", json=chat_body("local/m"), headers=k1)
    )
    await until(lambda: (d / "last_generate.json").exists())  # its reply plan is read
    r = await rig.client.post("/v1/chat/completions", json=chat_body("local/m"), headers=k1)
    assert r.status_code == 429, r.text
    assert r.json()["error"]["code"] == "rate_limit_exceeded" and "retry-after" in r.headers
    (d / "fake.json").write_text(json.dumps({"reply": {"pieces": ["b"]}}))
    k2 = {"x-helexa-key-id": "key_2"}
    r = await rig.client.post("/v1/chat/completions", json=chat_body("local/m"), headers=k2)
    assert r.status_code == 200, r.text
    first.cancel()
    await until(lambda: not rig.neuron.principals.counts)


# -- item 5: header and body deadlines, a cap on open connections ---------------------------


async def test_trickled_headers_and_silent_connections_are_closed(
    start_neuron: NeuronFactory,
) -> None:
    rig = await start_neuron(header_timeout_secs=0.5)
    r, w = await raw(rig, b"GET /health HTTP/1.1\r\n")
    stop = asyncio.Event()

    async def trickle() -> None:
        try:
            while not stop.is_set():
                w.write(b"X")
                await w.drain()
                await asyncio.sleep(0.1)
        except (ConnectionError, OSError):
            pass

    t = asyncio.create_task(trickle())
    assert await closed_by_server(r)
    stop.set()
    await t
    w.close()
    r, w = await raw(rig, b"")  # connects and sends nothing
    assert await closed_by_server(r)
    w.close()
    # a kept-alive connection past its first request: the next head is bound too
    r, w = await raw(rig, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    status, _ = await read_reply(r)
    assert status == 200
    w.write(b"GET /health HTTP/1.1\r\n")
    assert await closed_by_server(r)
    w.close()


async def test_a_body_that_never_arrives_gets_408(start_neuron: NeuronFactory) -> None:
    rig = await start_neuron(body_timeout_secs=0.5)
    head = request("/v1/chat/completions", b"x" * 100)[:-100]  # promises 100 bytes, sends 0
    r, w = await raw(rig, head + b'{"model"')
    status, body = await read_reply(r)
    assert status == 408 and json.loads(body)["error"]["code"] == "request_timeout"
    w.close()


async def test_connections_past_the_cap_are_refused_and_open_ones_still_work(
    start_neuron: NeuronFactory,
) -> None:
    rig = await start_neuron(max_connections=3)
    conns = [await raw(rig, b"") for _ in range(3)]
    site = rig.site
    assert site is not None
    await until(lambda: site.open == 3)
    r, w = await raw(rig, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    status, body = await read_reply(r)
    assert status == 503 and json.loads(body)["error"]["code"] == "too_many_connections"
    assert await closed_by_server(r)
    w.close()
    r0, w0 = conns[0]
    w0.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    status, _ = await read_reply(r0)
    assert status == 200
    for _, cw in conns:
        cw.close()


# -- small ones ----------------------------------------------------------------------------


async def test_non_utf8_authorization_is_401(start_neuron: NeuronFactory) -> None:
    rig = await start_neuron()
    for path, method in (("/metrics", "GET"), ("/v1/embeddings", "POST")):
        data = f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n".encode()
        r, w = await raw(rig, data + b"Authorization: Bearer \xff\xfe\xfd\r\n\r\n")
        status, body = await read_reply(r)
        assert status == 401, body
        assert json.loads(body)["error"]["code"] == "invalid_node_token"
        w.close()


async def test_deeply_nested_tools_are_400(start_neuron: NeuronFactory) -> None:
    rig = await start_neuron()
    await loaded(rig)
    deep = '{"a":' * 1000 + '"leaf"' + "}" * 1000  # written out: json.dumps would refuse it
    tools = '[{"type":"function","function":{"name":"f","parameters":' + deep + "}}]"
    body = '{"model":"local/m","messages":[{"role":"user","content":"hi"}],"tools":' + tools
    r = await rig.client.post("/v1/chat/completions", content=body + "}")
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "invalid_value"


async def test_unknown_model_names_add_no_metric_series(start_neuron: NeuronFactory) -> None:
    rig = await start_neuron()
    await loaded(rig)
    for i in range(5):
        r = await rig.client.post("/v1/chat/completions", json=chat_body(f"made-up-{i}"))
        assert r.status_code == 404
    assert "made-up" not in (await rig.client.get("/metrics")).text
    assert rig.metric("neuron_requests_total", model="unknown", endpoint="chat", status="404") == 5


async def test_logged_ids_are_escaped_and_request_ids_are_plain(
    start_neuron: NeuronFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="helexa.neuron.routes.plumbing")
    rig = await start_neuron()
    # aiohttp refuses C0 controls in headers; a C1 control (U+009B, CSI) in UTF-8 passes
    extra = b"x-helexa-key-id: k\xc2\x9b31mred\r\nx-request-id: evil\xc2\x9b2J\r\n"
    r, w = await raw(rig, request("/tokenize", b"{}", extra))
    status, _ = await read_reply(r)
    assert status == 400
    w.close()
    lines = [rec.getMessage() for rec in caplog.records if "/tokenize" in rec.getMessage()]
    assert lines and not any("\x9b" in line for line in lines)
    assert any("k\\x9b31mred" in line for line in lines)
    r, w = await raw(rig, request("/v1/models%1b%5b31m", b"", method="GET"))  # decoded in path
    status, _ = await read_reply(r)
    assert status == 404
    w.close()
    lines = [rec.getMessage() for rec in caplog.records if "/v1/models" in rec.getMessage()]
    assert lines and not any("\x1b" in line for line in lines)
    got = await rig.client.get("/models", headers={"x-request-id": "a b<c>"})
    assert got.headers["x-request-id"].startswith("req_")
    got = await rig.client.get("/models", headers={"x-request-id": "req-ok_1.2:3"})
    assert got.headers["x-request-id"] == "req-ok_1.2:3"
