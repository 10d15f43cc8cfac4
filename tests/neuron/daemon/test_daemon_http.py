"""The HTTP layer: auth, routes, envelopes, views, /tokenize."""

from __future__ import annotations

import logging
from typing import Any

import httpx
import pytest
from daemon_rig import NeuronFactory, chat_body, starts, write_tokenizer
from daemon_rig import start_neuron as start_neuron  # the fixture

from helexa.neuron import views


async def test_auth(start_neuron: NeuronFactory) -> None:
    rig = await start_neuron(token="s3cret")
    async with httpx.AsyncClient(base_url=rig.url, trust_env=False) as anon:
        r = await anon.get("/models")
        assert r.status_code == 401
        assert r.json()["error"] == {
            "message": "missing node token; supply 'Authorization: Bearer <token>'",
            "type": "invalid_request_error",
            "code": "invalid_node_token",
            "param": None,
        }
        r = await anon.get("/models", headers={"Authorization": "Bearer nope"})
        assert r.status_code == 401
        assert r.json()["error"]["message"] == "invalid node token"
        r = await anon.get("/models", headers={"Authorization": "Basic s3cret"})
        assert r.status_code == 401
        assert (await anon.get("/models", headers={"authorization": "bearer  s3cret"})).is_success
        for path in ("/health", "/version"):
            assert (await anon.get(path)).status_code == 200
        for method, path in [
            ("GET", "/discovery"),
            ("GET", "/metrics"),
            ("GET", "/v1/models"),
            ("POST", "/v1/chat/completions"),
            ("POST", "/models/load"),
            ("POST", "/tokenize"),
            ("GET", "/models/a/b/endpoint"),
        ]:
            assert (await anon.request(method, path)).status_code == 401, path


async def test_no_token_means_open(start_neuron: NeuronFactory) -> None:
    rig = await start_neuron(token=None)
    async with httpx.AsyncClient(base_url=rig.url, trust_env=False) as anon:
        assert (await anon.get("/models")).json() == []


async def test_routes_and_envelopes(start_neuron: NeuronFactory) -> None:
    rig = await start_neuron(max_body_mb=0.001)
    c = rig.client
    r = await c.get("/nope")
    assert r.status_code == 404
    assert r.json()["error"] == {
        "message": "no route for GET /nope",
        "type": "invalid_request_error",
        "code": "unknown_route",
        "param": None,
    }
    r = await c.get("/models/load")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
    r = await c.post("/v1/chat/completions", content=b"{nope")
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    r = await c.post("/v1/chat/completions", content=b"[1]")
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    r = await c.post("/v1/chat/completions", json={"messages": []})
    assert r.status_code == 400 and r.json()["error"]["code"] == "missing_model_field"
    r = await c.post("/v1/chat/completions", json=chat_body("m", "x" * 5000))
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "request_too_large"
    assert r.headers["x-request-id"].startswith("req_")


async def test_principal_headers_are_logged_with_the_request_id(
    start_neuron: NeuronFactory, caplog: pytest.LogCaptureFixture
) -> None:
    rig = await start_neuron()
    caplog.set_level(logging.DEBUG, logger="helexa.neuron")
    headers = {
        "x-request-id": "req_abc",
        "x-helexa-account-id": "acct-7",
        "x-helexa-key-id": "key-9",
    }
    r = await rig.client.post("/v1/chat/completions", json={"messages": []}, headers=headers)
    assert r.status_code == 400 and r.headers["x-request-id"] == "req_abc"
    lines = [rec.getMessage() for rec in caplog.records if "request=req_abc" in rec.getMessage()]
    assert lines == ["POST /v1/chat/completions 400 request=req_abc account=acct-7 key=key-9"]
    r = await rig.client.get("/models")
    rid = r.headers["x-request-id"]
    assert rid.startswith("req_")
    assert f"GET /models 200 request={rid} account=- key=-" in caplog.messages


async def test_unhandled_error_is_500(
    start_neuron: NeuronFactory, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    rig = await start_neuron()

    def boom(*_: Any) -> Any:
        raise RuntimeError("secret detail")

    monkeypatch.setattr(views, "list_models", boom)
    r = await rig.client.get("/models")
    assert r.status_code == 500
    assert r.json()["error"] == {
        "message": "internal server error",
        "type": "api_error",
        "code": "internal_server_error",
        "param": None,
    }
    assert "secret detail" not in r.text
    assert any("unhandled error on GET /models" in m for m in caplog.messages)


async def test_endpoint_route(start_neuron: NeuronFactory) -> None:
    rig = await start_neuron(bind_url="http://gpu-1:13131")
    await rig.load(rig.model("m"), served_model_id="org/name")
    for path in ("/models/org%2Fname/endpoint", "/models/org/name/endpoint"):
        r = await rig.client.get(path)
        assert r.status_code == 200 and r.json() == {"url": "http://gpu-1:13131"}, path
    r = await rig.client.get("/models/x%2Fy/endpoint")
    assert r.status_code == 404
    assert r.json()["error"]["message"] == "model 'x/y' is not known to this neuron"


async def test_version_discovery_health(start_neuron: NeuronFactory) -> None:
    rig = await start_neuron()
    v = (await rig.client.get("/version")).json()
    assert v["package_version"] and v["git_sha"]
    assert v["features"] == ["cpu"] and v["torch_version"]
    d = (await rig.client.get("/discovery")).json()
    assert d["devices"] == [
        {
            "index": 0,
            "kind": "cpu",
            "name": "cpu",
            "vram_total_mb": 16000,
            "compute_capability": None,
        }
    ]
    assert "cuda_unavailable_reason" not in d and "cuda_visible" not in d
    assert d["harnesses"] == ["torch"] and d["max_prompt_tokens"] == 16384
    h = (await rig.client.get("/health")).json()
    assert h["status"] == "ok" and h["uptime_secs"] >= 0
    assert h["devices"][0]["kind"] == "cpu" and h["devices"][0]["vram_used_mb"] == 0
    assert h["activation"]["state"] == "ready" and h["models"] == []


async def test_gpu_discovery_and_device_metrics(start_neuron: NeuronFactory) -> None:
    rig = await start_neuron(gpus=[(24000, 20000, "8.9"), (12000, 1000, "8.6")])
    d = (await rig.client.get("/discovery")).json()
    assert [x["kind"] for x in d["devices"]] == ["cuda", "cuda"]
    v = (await rig.client.get("/version")).json()
    assert v["features"] == ["cuda", "cpu"]
    text = (await rig.client.get("/metrics")).text
    assert 'neuron_device_memory_total_mb{device="1"} 12000.0' in text
    assert 'neuron_device_memory_used_mb{device="0"} 4000.0' in text


async def test_tokenize_loaded_model(start_neuron: NeuronFactory) -> None:
    rig = await start_neuron()
    await rig.load(rig.model("m"))
    body = chat_body("local/m", "hello")
    r = await rig.client.post("/tokenize", json=body)
    assert r.status_code == 200
    count = r.json()["count"]
    assert r.json()["model"] == "local/m"
    chat = await rig.client.post("/v1/chat/completions", json=body)
    assert chat.json()["usage"]["prompt_tokens"] == count
    r = await rig.client.post("/tokenize", json={"model": "local/m", "prompt": "abc"})
    assert r.json()["count"] == 3


async def test_tokenize_never_starts_a_worker(start_neuron: NeuronFactory) -> None:
    rig = await start_neuron()
    d = rig.model("real")
    write_tokenizer(d)
    msgs = [{"role": "user", "content": "hi"}]
    r = await rig.client.post(
        "/tokenize", json={"model": "local/real", "model_id": str(d), "messages": msgs}
    )
    assert r.status_code == 200, r.text
    # <|im_start|> user \n h i <|im_end|> \n <|im_start|> a s s i s t a n t \n
    assert r.json()["count"] == 1 + 4 + 1 + 2 + 1 + 1 + 1 + 9 + 1
    r = await rig.client.post("/tokenize", json={"model": str(d), "prompt": "abc"})
    assert r.json() == {"model": str(d), "count": 3}
    assert starts(d) == 0
    assert rig.neuron.registry.records == {}
    r = await rig.client.post("/tokenize", json={"model": "no/such", "prompt": "x"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    r = await rig.client.post("/tokenize", json={"model": "/does/not/exist", "prompt": "x"})
    assert r.status_code == 404
    # an unloaded model's tokenizer stays usable through its kept record
    await rig.load(d)
    await rig.unload("local/real")
    r = await rig.client.post("/tokenize", json={"model": "local/real", "prompt": "abcd"})
    assert r.json()["count"] == 4
