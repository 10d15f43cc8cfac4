"""Malformed input never breaks cortex: random bodies, JSON of the wrong types, odd and large
header values, wrong methods and random paths, thrown at every route (issue 2 "Tests").
The properties: never a 5xx, every error is a JSON envelope (OpenAI shape, or the
Anthropic shape on /v1/messages*), never a hang, and nothing stays reserved or in flight.

One gateway serves every example. It runs on the test's event loop, and hypothesis drives a
synchronous httpx client from a worker thread, so the loop stays free to serve.
"""

from __future__ import annotations

import asyncio
import json
import string
from urllib.parse import unquote

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rig.cortex_rig import CortexFactory
from rig.fake_neuron import FakeNeuron

ROUTES = (
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/responses",
    "/v1/embeddings",
    "/v1/messages",
    "/v1/messages/count_tokens",
    "/v1/models",
    "/health",
    "/",
    "/version",
    "/metrics",
    "/dashboard",
    "/api/fleet",
    "/api/history",
    "/api/models/load",
    "/api/models/unload",
)
KEYS = [
    {"key": "sk-user", "account_id": "acct-user", "hard_cap": 100_000},
    {
        "key": "sk-roll",
        "account_id": "acct-roll",
        "hard_cap": 20_000,
        "window": {"kind": "rolling", "seconds": 60},
    },
    {"key": "sk-admin", "account_id": "ops", "admin": True},
]
# Headers the HTTP client owns (framing, connection management): never set by hand.
RESERVED = {
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "expect",
    "proxy-connection",
    # aiohttp inflates request bodies in its protocol layer; a body that fails to inflate is
    # refused there (plain-text 400, or a dropped connection) before cortex runs. Bodies that
    # fail inside cortex's read are covered by test_errors.test_undecodable_body_is_400_not_500.
    "content-encoding",
}
CLIENT_TIMEOUT = 15.0

# -- strategies ---------------------------------------------------------------------------------

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=12), inner, max_size=5)
    ),
    max_leaves=20,
)
models = st.one_of(
    st.sampled_from(["test-model", "helexa/small", "cat/model", "no/such", "", "x"]),
    json_values,
)
fields = {
    "messages": st.one_of(
        json_values,
        st.lists(
            st.fixed_dictionaries(
                {"role": st.one_of(st.sampled_from(["user", "system"]), json_values)},
                optional={"content": json_values},
            ),
            max_size=3,
        ),
    ),
    "stream": st.one_of(st.booleans(), json_values),
    "max_tokens": st.one_of(
        st.integers(-10, 64), st.sampled_from([30_000, 200_000, 10**12]), json_values
    ),
    "max_completion_tokens": json_values,
    "max_output_tokens": json_values,
    "input": json_values,
    "prompt": json_values,
    "node": st.one_of(st.sampled_from(["mock-node", "nope"]), json_values),
    "keep_alive": json_values,
    "system": json_values,
    "tools": json_values,
}
object_bodies = st.fixed_dictionaries(
    {}, optional={"model": models, **fields, "extra": json_values}
).map(lambda d: json.dumps(d).encode())
# Mostly well-formed envelopes with a real-looking model, so the routing, budget and proxy
# paths run too, not only the parser.
plausible_bodies = st.fixed_dictionaries(
    {
        "model": st.sampled_from(["test-model", "helexa/small", "cat/model", "no/such"]),
        "messages": st.just([{"role": "user", "content": "hi"}]),
    },
    optional={k: v for k, v in fields.items() if k != "messages"},
).map(lambda d: json.dumps(d).encode())
bodies = st.one_of(
    plausible_bodies,
    plausible_bodies,
    st.none(),
    st.binary(max_size=600),
    json_values.map(lambda v: json.dumps(v).encode()),
    object_bodies,
    object_bodies.map(lambda b: b[: len(b) // 2]),  # truncated JSON
    st.just(b'{"model": "test-model", "pad": "' + b"x" * (3 * 2**19) + b'"}'),  # 1.5 MB > 1 MB
)
path_chars = string.ascii_letters + string.digits + "-._~/%?&=:@!$'()*+,;"
random_paths = st.text(alphabet=path_chars, max_size=40).map(lambda s: "/" + s)
paths = st.one_of(
    st.sampled_from(ROUTES),
    st.sampled_from(ROUTES).flatmap(lambda r: random_paths.map(lambda s: r + s)),
    random_paths,
    st.sampled_from(["/api/history?limit=", "/api/history?limit=-5", "/api/history?limit=9e9"]),
)
# Methods an HTTP/1.1 parser accepts. A token the parser doesn't know (`AAA`) is refused by
# aiohttp's protocol layer with a plain-text 400 before any application code runs.
methods = st.sampled_from(
    [
        *("GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "TRACE", "PROPFIND"),
        *("MKCOL", "COPY", "MOVE", "LOCK", "UNLOCK", "SEARCH", "PURGE", "REPORT", "QUERY"),
    ]
)
GET_ROUTES = ("/v1/models", "/health", "/", "/version", "/api/fleet", "/api/history")
POST_ROUTES = tuple(r for r in ROUTES if r not in (*GET_ROUTES, "/metrics", "/dashboard"))
# Half the time the right method for a real route; otherwise anything against anything.
requests_lines = st.one_of(
    st.sampled_from([("POST", r) for r in POST_ROUTES] + [("GET", r) for r in GET_ROUTES]),
    st.tuples(methods, paths),
)
header_names = st.from_regex(r"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,24}", fullmatch=True).filter(
    lambda n: n.lower() not in RESERVED
)
# Visible ASCII, space, tab and obs-text (0x80-0xFF), as HTTP allows; up to 6 KB.
value_bytes = [b for b in range(0x20, 0x100) if b != 0x7F] + [0x09]
header_values = st.one_of(
    st.lists(st.sampled_from(value_bytes), max_size=64).map(bytes),
    st.integers(0, 6000).map(lambda n: b"A" * n),
).map(lambda b: b.strip(b" \t"))
good_keys = st.sampled_from([b"Bearer sk-user", b"Bearer sk-roll", b"bearer sk-admin"])
auth_values = st.one_of(
    good_keys,
    good_keys,
    st.sampled_from(
        [
            b"Bearer",
            b"Bearer junk",
            b"Basic dXNlcjpwYXNz",
            b"Bearer " + b"k" * 5000,
        ]
    ),
    header_values,
)
content_types = st.sampled_from(
    [
        b"application/json",
        b"application/json; charset=latin-1",
        b"text/plain",
        b"multipart/form-data; boundary=xyz",
        b"application/x-www-form-urlencoded",
        b"",
    ]
)
special_headers = st.fixed_dictionaries(
    {},
    optional={
        b"authorization": auth_values,
        b"x-api-key": st.one_of(st.just(b"sk-user"), header_values),
        b"content-type": st.one_of(content_types, header_values),
        b"x-request-id": header_values,
        b"x-helexa-account-id": header_values,
        b"x-helexa-key-id": header_values,
        b"accept": st.sampled_from([b"text/event-stream", b"text/html", b"*/*"]),
        b"accept-encoding": st.sampled_from([b"gzip", b"br", b"identity", b"*"]),
        b"content-encoding": st.sampled_from([b"identity", b"bogus"]),
        b"origin": st.just(b"https://app.example"),
        b"anthropic-version": header_values,
    },
)
random_headers = st.lists(
    st.tuples(header_names.map(str.encode), header_values), max_size=6, unique_by=lambda t: t[0]
)

# A third of the examples are metered inference calls (a good key, a plausible body), so
# budget refusals and settled reservations happen alongside the garbage.
INFERENCE = ("/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/embeddings")
metered = st.one_of(
    st.none(),
    st.none(),
    st.tuples(st.sampled_from(INFERENCE), plausible_bodies, good_keys),
)

# -- checks -------------------------------------------------------------------------------------


def check_envelope(path: str, r: httpx.Response) -> None:
    where = f"{r.request.method} {path} -> {r.status_code}"
    ctype = r.headers.get("content-type", "")
    assert ctype.startswith("application/json"), f"{where}: content-type {ctype!r}: {r.text!r}"
    body = r.json()
    assert isinstance(body, dict), where
    if "messages" in unquote(path) and body.get("type") == "error":
        err = body["error"]
        assert set(err) >= {"type", "message"}, where
        assert isinstance(err["type"], str) and isinstance(err["message"], str), where
        return
    assert set(body) == {"error"}, f"{where}: {body!r}"
    err = body["error"]
    assert {"message", "type", "code", "param"} <= set(err), f"{where}: {err!r}"
    assert isinstance(err["message"], str) and err["message"], where
    assert isinstance(err["type"], str) and err["type"], where
    assert err["code"] is None or isinstance(err["code"], str), where
    assert err["param"] is None or isinstance(err["param"], str), where
    for secret in ("Traceback", "sk-user", "sk-admin", "sk-roll", "node-secret"):
        assert secret not in r.text, f"{where}: leaks {secret!r}"


def run_examples(base: str) -> None:
    with httpx.Client(timeout=CLIENT_TIMEOUT) as client:

        @settings(
            max_examples=150,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(
            line=requests_lines,
            body=bodies,
            special=special_headers,
            extra=random_headers,
            meter=metered,
        )
        def example(
            line: tuple[str, str],
            body: bytes | None,
            special: dict[bytes, bytes],
            extra: list[tuple[bytes, bytes]],
            meter: tuple[str, bytes, bytes] | None,
        ) -> None:
            method, path = line
            if meter is not None:
                method, path, body = "POST", meter[0], meter[1]
                special = {**special, b"authorization": meter[2]}
            headers = [(k, v) for k, v in extra if k.lower() not in special]
            headers += list(special.items())
            try:
                # raw_path: the path goes out as generated (`//:A` is not a host here).
                url = httpx.URL(base, raw_path=path.encode())
                r = client.request(method, url, content=body, headers=headers)
            except httpx.TimeoutException as e:
                raise AssertionError(f"{method} {path}: no reply within {CLIENT_TIMEOUT}s") from e
            where = f"{method} {path} -> {r.status_code}: {r.text[:300]!r}"
            assert r.status_code < 500, where
            if method == "HEAD" or r.status_code < 400:
                return
            check_envelope(path, r)

        example()


async def test_malformed_input_never_breaks_cortex(
    start_cortex: CortexFactory, fake: FakeNeuron
) -> None:
    cortex = await start_cortex(
        {"mock-node": fake},
        models={"models": [{"id": "cat/model"}], "aliases": {"helexa/small": "test-model"}},
        gateway={"max_body_mb": 1, "request_timeout_secs": 5},
        entitlements={"keys": KEYS},
    )
    await asyncio.to_thread(run_examples, cortex.url)

    # Every request has finished: nothing is left reserved or marked in flight.
    auth = cortex.gw.auth

    def leftovers() -> dict[str, int]:
        held: dict[str, int] = {}
        for k in KEYS:
            principal = auth.resolve(str(k["key"]))
            assert principal is not None
            held[str(k["key"])] = auth.snapshot(principal).reserved
        for n in cortex.gw.fleet:
            held.update({f"in_flight {n.name}/{m}": c for m, c in n.local_in_flight.items()})
        return {k: v for k, v in held.items() if v}

    # A handler's cleanup can trail its last byte by a moment; cortex has no event for it.
    for _ in range(500):
        if not leftovers():
            break
        await asyncio.sleep(0.01)
    assert leftovers() == {}
    # And cortex still serves a plain request.
    async with httpx.AsyncClient(timeout=10) as c:
        r = await c.post(
            cortex.base + "/chat/completions",
            json={"model": "test-model", "messages": [{"role": "user", "content": "hi"}]},
        )
    assert r.status_code == 200
