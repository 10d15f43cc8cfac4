"""What a load id may name: path loads only under `allowed_model_roots`, hub ids exactly
`org/name` (a 400 at once, never a `failed` record). Real daemon on loopback, fake workers."""

from __future__ import annotations

from pathlib import Path

import pytest
from daemon_rig import NeuronFactory, model_dir, write_tokenizer
from daemon_rig import start_neuron as start_neuron  # the fixture


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a hub id that gets past the grammar stays local


async def test_path_loads_stay_under_allowed_roots(
    start_neuron: NeuronFactory, tmp_path: Path
) -> None:
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    rig = await start_neuron(allowed_model_roots=[str(allowed)])
    inside = model_dir(allowed, "m")
    secret = model_dir(outside, "secret")
    write_tokenizer(secret)
    (allowed / "link").symlink_to(secret)
    for bad in (secret, allowed / "link", f"{allowed}/../outside/secret"):
        r = await rig.load(bad)
        assert r.status_code == 403, r.text
        assert r.json()["error"]["code"] == "model_path_not_allowed"
    models = {m["id"] for m in (await rig.client.get("/models")).json()}
    assert models == set()  # a refused path leaves no record
    # /tokenize reads a tokenizer from a load id too: same roots
    r = await rig.client.post(
        "/tokenize", json={"model": "x/y", "prompt": "hi", "model_id": str(secret)}
    )
    assert r.status_code == 403, r.text
    assert r.json()["error"]["code"] == "model_path_not_allowed"
    write_tokenizer(inside)
    r = await rig.client.post(
        "/tokenize", json={"model": "x/y", "prompt": "hi", "model_id": str(inside)}
    )
    assert r.status_code == 200, r.text
    r = await rig.load(inside)
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("model_id", ["org/../x", "../../etc", "org/name/extra", "h:org/./x"])
async def test_hub_ids_with_dot_segments_are_a_400(
    start_neuron: NeuronFactory, model_id: str
) -> None:
    rig = await start_neuron(sources={"h": "https://h.example"})
    r = await rig.load(model_id)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "invalid_model_id"
    assert (await rig.client.get("/models")).json() == []
