"""Malformed requests on every neuron route end as enveloped 4xx, never a 5xx or a hang.

A body may happen to be acceptable on some route (unknown fields are ignored): then it may
succeed; what it may never do is fail as a 5xx or without the error envelope."""

from __future__ import annotations

from typing import Any

from daemon_rig import NeuronFactory
from daemon_rig import start_neuron as start_neuron  # the fixture

ROUTES = (
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/responses",
    "/v1/embeddings",
    "/tokenize",
    "/models/load",
    "/models/unload",
)
M = "local/m"
BODIES: list[Any] = [
    b"",
    b"{",
    b"[]",
    b'"text"',
    b"\xff\xfe",
    {"model": 5},
    {"model": ""},
    {"model_id": 5},
    {"model_id": "no-slash"},
    {"model": M, "messages": "hi"},
    {"model": M, "messages": [{"role": "bogus", "content": "x"}]},
    {"model": M, "messages": [{"role": "user", "content": {"nested": True}}]},
    {"model": M, "messages": [{"role": "user", "content": "x"}], "max_tokens": -1},
    {"model": M, "messages": [{"role": "user", "content": "x"}], "temperature": "hot"},
    {"model": M, "messages": [{"role": "user", "content": "x"}], "stop": [1, 2]},
    {"model": M, "messages": [{"role": "user", "content": "x"}], "n": 3},
    {"model": M, "messages": [{"role": "user", "content": "x"}], "tools": "Read"},
    {"model": M, "prompt": ["a", "b"]},
    {"model": M, "prompt": 7},
    {"model": M, "input": {"x": 1}},
    {"model": M, "input": [{"type": "mystery"}]},
    {"model": M, "input": ["a"], "encoding_format": "hex"},
    {"model": M, "input": [[1, "x"]]},
    {"model": M, "previous_response_id": "resp_1", "input": "x"},
]


async def test_no_malformed_body_reaches_a_5xx(start_neuron: NeuronFactory) -> None:
    rig = await start_neuron()
    r = await rig.load(rig.model("m", {"reply": {"pieces": ["ok"]}}))
    assert r.status_code == 200, r.text
    refused = dict.fromkeys(ROUTES, 0)
    for path in ROUTES:
        for body in BODIES:
            if isinstance(body, bytes):
                r = await rig.client.post(
                    path, content=body, headers={"content-type": "application/json"}
                )
            else:
                r = await rig.client.post(path, json=body)
            where = f"{path} {body!r}"
            assert r.status_code < 500, f"{where} -> {r.status_code} {r.text[:300]}"
            if r.status_code < 400:
                continue
            refused[path] += 1
            err = r.json()["error"]
            assert set(err) >= {"message", "type", "code", "param"}, where
    # every route refused at least the bodies that aren't a JSON object, plus the bad model
    assert all(n >= 7 for n in refused.values()), refused
    # the model still serves after all that
    ok = await rig.client.post(
        "/v1/chat/completions", json={"model": M, "messages": [{"role": "user", "content": "x"}]}
    )
    assert ok.status_code == 200, ok.text
