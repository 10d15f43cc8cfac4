"""`GET /dashboard`: the page as served, and as a real Chromium renders it."""

from __future__ import annotations

import base64
import hashlib
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from rig.chromium import Page, open_page, png_pixel
from rig.cortex_rig import NODE_TOKEN, Cortex, CortexFactory
from rig.fake_neuron import FakeNeuron

ADMIN = "sk-admin"
USER = "sk-user"
KEYS = {
    "require_auth": True,
    "keys": [
        {"key": ADMIN, "account_id": "ops", "key_id": "ops-admin", "admin": True},
        {"key": USER, "account_id": "acct-1", "key_id": "key-1"},
    ],
}
CAT = "cat-model"
XSS = "<img src=x onerror=alert(1)>"
USED_RGB = (0x3B, 0x6F, 0xD8)  # --used in the page's CSS
FREE_RGB = (0xDF, 0xE7, 0xF5)  # --free


async def fetch(cortex: Cortex, path: str, **kw: Any) -> httpx.Response:
    async with httpx.AsyncClient(timeout=20) as c:
        return await c.get(cortex.url + path, **kw)


@pytest.fixture
async def fleet(start_cortex: CortexFactory) -> AsyncIterator[tuple[FakeNeuron, FakeNeuron]]:
    """node-a serves test-model (busy: 2 in flight, 1 queued); node-b is empty."""
    async with (
        FakeNeuron(token=NODE_TOKEN) as a,
        FakeNeuron(models=[], token=NODE_TOKEN) as b,
    ):
        a.health_models = [
            {"id": "test-model", "status": "loaded", "in_flight": 2, "queue_depth": 1}
        ]
        yield a, b


# ---- the page as served -------------------------------------------------------------------


async def test_page_is_public_html_under_a_strict_csp(
    start_cortex: CortexFactory, fake: FakeNeuron
) -> None:
    cortex = await start_cortex({"mock-node": fake}, entitlements=KEYS)
    r = await fetch(cortex, "/dashboard")  # no key: the page itself holds no data
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    assert r.headers["x-content-type-options"] == "nosniff"
    csp = dict(d.strip().split(" ", 1) for d in r.headers["content-security-policy"].split(";"))
    assert csp["default-src"] == "'self'"
    assert csp["connect-src"] == "'self'"
    assert csp["frame-ancestors"] == "'none'"
    assert "unsafe" not in r.headers["content-security-policy"]
    for tag in ("script", "style"):
        bodies = re.findall(rf"<{tag}>(.*?)</{tag}>", r.text, re.S)
        assert len(bodies) == 1
        digest = base64.b64encode(hashlib.sha256(bodies[0].encode()).digest()).decode()
        assert csp[f"{tag}-src"] == f"'sha256-{digest}'"
    # The data behind it still needs the key.
    assert (await fetch(cortex, "/api/fleet")).status_code == 401


async def test_page_loads_nothing_from_elsewhere_and_never_parses_data_as_html(
    cortex: Cortex,
) -> None:
    html = (await fetch(cortex, "/dashboard")).text
    assert "//" not in re.sub(r"<script>.*?</script>", "", html, flags=re.S)  # no URLs in markup
    refs = re.findall(r"""\b(?:src|href|action)\s*=\s*["']?([^"'\s>]*)""", html)
    assert refs == ["data:,"]  # the favicon, inline
    script = re.search(r"<script>(.*?)</script>", html, re.S)
    assert script is not None
    code = script.group(1)
    assert not re.search(r"https?:|\bimport\b|<script src", code)
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in code
    assert "localStorage" not in code  # the key lives only for the browser session


# ---- in a real browser -------------------------------------------------------------------------


async def test_open_fleet_renders_nodes_devices_models_and_history_as_text(
    start_cortex: CortexFactory, fleet: tuple[FakeNeuron, FakeNeuron], tmp_path: Path
) -> None:
    a, b = fleet
    cortex = await start_cortex({"node-a": a, "node-b": b})
    async with httpx.AsyncClient(timeout=20) as c:
        r = await c.post(
            cortex.base + "/chat/completions",
            json={"model": "test-model", "messages": [{"role": "user", "content": "hi"}]},
            headers={"x-request-id": XSS},
        )
        assert r.status_code == 200
        # cortex replaces an unsafe request id; a model id still reaches history as given.
        assert r.headers["x-request-id"].startswith("req_")
        r = await c.post(
            cortex.base + "/chat/completions",
            json={"model": XSS, "messages": [{"role": "user", "content": "hi"}]},
        )
        assert r.status_code == 404
    async with open_page(tmp_path / "profile") as page:
        await page.goto(cortex.url + "/dashboard")
        await page.wait_for("document.querySelectorAll('[data-node]').length === 2")
        await page.wait_for("document.querySelector('#history tbody tr')")
        text = await page.eval("document.body.innerText")
        for want in ("node-a", "node-b", "2/2 nodes healthy", "test-model", "no models"):
            assert want in text
        row = await page.eval(
            "[...document.querySelectorAll('[data-node=\"node-a\"] tr[data-model]')]"
            ".map(r => [...r.cells].map(c => c.textContent))"
        )
        # in flight is cortex's busy score: the neuron's 2 running + 1 queued.
        assert [c for i, c in enumerate(row[0]) if i != 6] == [
            "test-model",
            "loaded",
            "7.8 GB",
            "0",
            "3",
            "1",
            "",
        ]
        assert row[0][6] != "–"  # last used: the request above
        mem = await page.eval(
            "[...document.querySelectorAll('.mem')].map(e => e.textContent.split(' · ')[0])"
        )
        assert mem == ["11.7 GB used"] * 2
        width = await page.eval("document.querySelector('.bar .used').style.width")
        assert width == "37.5%"  # 12000 of 32000 MB
        # A client-chosen model id is shown verbatim, as text, and never runs.
        model = await page.eval(
            "document.querySelector('#history tbody td.id:not(.rid)').textContent"
        )
        assert model == XSS
        assert await page.eval("document.querySelectorAll('img').length") == 0
        # No key given: no admin controls.
        assert await page.eval("document.getElementById('admin').hidden") is True
        assert await page.eval("document.querySelectorAll('button.unload').length") == 0
        await check_screenshot(page, tmp_path)
        assert page.dialogs == []
        assert page.errors == []


async def check_screenshot(page: Page, tmp_path: Path) -> None:
    """What is painted, not just what is in the DOM: the first memory bar's colours."""
    png = await page.screenshot()
    keep = os.environ.get("HELEXA_SCREENSHOT_DIR")
    for d in (tmp_path, *([Path(keep)] if keep else [])):
        (d / "dashboard.png").write_bytes(png)
    box = await page.eval(
        "(() => { const r = document.querySelector('.bar').getBoundingClientRect();"
        " return [r.left, r.top, r.width, r.height]; })()"
    )
    left, top, width, height = box
    y = int(top + height / 2)
    assert png_pixel(png, int(left + width * 0.2), y) == USED_RGB
    assert png_pixel(png, int(left + width * 0.8), y) == FREE_RGB


async def test_with_auth_it_asks_for_a_key_keeps_it_per_session_and_loads(
    start_cortex: CortexFactory, fleet: tuple[FakeNeuron, FakeNeuron], tmp_path: Path
) -> None:
    a, b = fleet
    cortex = await start_cortex(
        {"node-a": a, "node-b": b},
        models={"models": [{"id": CAT, "vram_mb": 4000}]},
        entitlements=KEYS,
    )
    async with open_page(tmp_path / "profile") as page:
        await page.goto(cortex.url + "/dashboard")
        await page.wait_for("document.getElementById('notice').textContent.includes('API key')")
        assert await page.eval("document.querySelectorAll('[data-node]').length") == 0
        await page.eval(
            f"document.getElementById('key').value = {ADMIN!r};"
            "document.getElementById('key-form').requestSubmit()"
        )
        await page.wait_for("document.querySelectorAll('[data-node]').length === 2")
        assert await page.eval("sessionStorage.getItem('helexa.dashboard.key')") == ADMIN
        assert await page.eval("localStorage.length") == 0
        assert await page.eval("document.getElementById('admin').hidden") is False

        # Load through the page's own form, onto node-b.
        await page.wait_for(f"document.querySelector('#catalogue option[value=\"{CAT}\"]')")
        await page.eval(
            f"document.getElementById('load-model').value = {CAT!r};"
            "document.getElementById('load-node').value = 'node-b';"
            "document.getElementById('load-form').requestSubmit()"
        )
        loaded = f'[data-node="node-b"] tr[data-model="{CAT}"] .badge'
        await page.wait_for(f"document.querySelector('{loaded}')?.textContent === 'loaded'")
        assert a.count("/models/load") == 0
        assert b.last("/models/load").json["model_id"] == CAT
        assert await page.eval("document.getElementById('action-result').textContent") == (
            f"loaded {CAT} on node-b"
        )

        # A change made elsewhere (the admin API) shows up on the next refresh.
        async with httpx.AsyncClient(timeout=20) as c:
            r = await c.post(
                cortex.url + "/api/models/unload",
                json={"model": CAT, "node": "node-b"},
                headers={"authorization": f"Bearer {ADMIN}"},
            )
        assert r.status_code == 200
        await page.wait_for(f"document.querySelector('{loaded}')?.textContent === 'unloaded'")

        # Forgetting the key drops the admin controls and the data.
        await page.eval("document.getElementById('forget').click()")
        await page.wait_for("document.getElementById('notice').textContent.includes('API key')")
        assert await page.eval("sessionStorage.length") == 0
        assert page.dialogs == []
        assert [e for e in page.errors if "401" not in e] == []


async def test_an_ordinary_key_is_told_the_fleet_needs_an_admin_key(
    start_cortex: CortexFactory, fleet: tuple[FakeNeuron, FakeNeuron], tmp_path: Path
) -> None:
    """Issue 11: under require_auth the fleet's hosts are the operator's (403 for a tenant)."""
    a, b = fleet
    cortex = await start_cortex({"node-a": a, "node-b": b}, entitlements=KEYS)
    async with open_page(tmp_path / "profile") as page:
        await page.goto(cortex.url + "/dashboard")
        await page.wait_for("document.getElementById('notice').textContent.includes('API key')")
        await page.eval(
            f"document.getElementById('key').value = {USER!r};"
            "document.getElementById('key-form').requestSubmit()"
        )
        await page.wait_for(
            "document.getElementById('notice').textContent.includes('needs an admin key')"
        )
        assert await page.eval("document.querySelectorAll('[data-node]').length") == 0
        assert "node-a" not in await page.eval("document.body.innerText")
