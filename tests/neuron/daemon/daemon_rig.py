"""Tier-0 rig for the neuron daemon: a real aiohttp app on loopback, fake workers, no torch.

`start_neuron(...)` serves a `Neuron` whose workers are `fake_worker.py` processes (each starts
in ~70 ms), whose devices come from a fake probe (one CPU device, or GPUs given in MB) and whose
tokenizer is character-level (one token per character), so token counts are predictable.
Model directories hold `fake.json`, which tells the fake worker how to behave.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web

from helexa.config.neuron import NeuronConfig
from helexa.neuron.app import Neuron, make_runner, make_site
from helexa.neuron.discovery import NeuronDiscovery
from helexa.neuron.supervisor import Supervisor
from helexa.wire.listener import GuardedSite
from helexa.wire.neuron import Device, DeviceHealth

FAKE_WORKER = Path(__file__).with_name("fake_worker.py")
WORKER_CMD = [sys.executable, str(FAKE_WORKER)]
TOKEN = "node-secret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


# -- model directories ------------------------------------------------------------------------


def model_dir(root: Path, name: str, fake: Mapping[str, Any] | None = None) -> Path:
    """A local model directory the daemon accepts (config.json) with a fake-worker script."""
    d = root / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps({"max_position_embeddings": 4096}))
    set_fake(d, fake or {})
    return d


def set_fake(d: Path, fake: Mapping[str, Any]) -> None:
    (d / "fake.json").write_text(json.dumps(dict(fake)))


def worker_events(d: Path) -> list[str]:
    p = d / "events.log"
    return p.read_text().splitlines() if p.exists() else []


def starts(d: Path) -> int:
    p = d / ".starts"
    return int(p.read_text()) if p.exists() else 0


CHATML = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def write_tokenizer(d: Path, template: str | None = CHATML) -> None:
    """A real (torch-free) tokenizer.json: one token per printable character, ChatML specials
    and atomic <think>/<tool_call> markers; fast to build, loads with the real ChatTokenizer."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    vocab = {"<unk>": 0, "\n": 1}
    for i in range(32, 127):
        vocab[chr(i)] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    specials = ["<|im_start|>", "<|im_end|>"]
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    markers = ["<think>", "</think>", "<tool_call>", "</tool_call>"]
    tok.add_tokens([AddedToken(t, normalized=False) for t in markers])
    tok.save(str(d / "tokenizer.json"))
    cfg: dict[str, Any] = {"eos_token": "<|im_end|>"}
    if template is not None:
        cfg["chat_template"] = template
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))


# -- fakes --------------------------------------------------------------------------------------


class CharTokenizer:
    """One token per character; a ChatML-ish template. Flags come from fake.json "tokenizer"."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        try:
            cfg = json.loads((self.root / "fake.json").read_text()).get("tokenizer") or {}
        except (OSError, ValueError):
            cfg = {}
        self.reasoning = bool(cfg.get("reasoning", True))
        self.tool_call = bool(cfg.get("tool_call", True))
        self.opens_think = bool(cfg.get("opens_think", False))
        self.xml_calls = bool(cfg.get("xml_calls", False))
        self.has_chat_template = bool(cfg.get("template", True))
        self.eos_token_ids = [0]

    def render(self, messages: Iterable[Mapping[str, Any]], tools: Any = None, **_: Any) -> str:
        out = []
        if tools:
            out.append("<|im_start|>system\n# Tools\n" + json.dumps(tools) + "<|im_end|>\n")
        for m in messages:
            content = m.get("content")
            if isinstance(content, list):
                content = "\n".join(str(p.get("text", "")) for p in content)
            out.append(f"<|im_start|>{m.get('role')}\n{content or ''}<|im_end|>\n")
        out.append("<|im_start|>assistant\n")
        if self.opens_think:
            out.append("<think>\n")
        return "".join(out)

    def encode_chat(
        self,
        messages: Iterable[Mapping[str, Any]],
        tools: Any = None,
        *,
        chat_template_kwargs: Mapping[str, Any] | None = None,
        model_id: str | None = None,
    ) -> tuple[str, list[int]]:
        text = self.render(messages, tools)
        return text, self.encode(text)

    def prompt_opens_think(self, rendered: str) -> bool:
        return rendered.endswith("<think>\n")

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [ord(c) for c in text]

    def encode_batch(
        self, texts: Sequence[str], add_special_tokens: bool = True
    ) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return "".join(chr(i) for i in ids)

    vocab_size = 0x110000  # every code point

    def template_source(self, tools: Any = None) -> str | None:
        """Only what callers look for in it: "<function=" for Qwen3-Coder XML calls."""
        return "<function=" if self.xml_calls else None


def chat_prompt_len(content: str) -> int:
    """Prompt tokens CharTokenizer gives a one-user-message chat (no tools)."""
    return len(f"<|im_start|>user\n{content}<|im_end|>\n<|im_start|>assistant\n")


class FakeProbe:
    """DeviceProbe's interface: one CPU device, or GPUs given as (total_mb, free_mb, cc)."""

    def __init__(
        self, cfg: NeuronConfig, gpus: Sequence[tuple[int, int, str]] | None = None
    ) -> None:
        self.cfg = cfg
        self.gpus = list(gpus or [])

    def discover(self) -> NeuronDiscovery:
        if self.gpus:
            devices = [
                Device(
                    index=i, kind="cuda", name=f"GPU {i}", vram_total_mb=t, compute_capability=cc
                )
                for i, (t, _, cc) in enumerate(self.gpus)
            ]
            visible = [f"GPU-{i}" for i in range(len(self.gpus))]
        else:
            devices = [
                Device(index=0, kind="cpu", name="cpu", vram_total_mb=self.cfg.cpu_memory_mb)
            ]
            visible = []
        return NeuronDiscovery(
            hostname="test",
            devices=devices,
            harnesses=["torch"],
            max_prompt_tokens=self.cfg.max_prompt_tokens,
            max_output_tokens=self.cfg.max_output_tokens,
            cuda_visible=visible,
        )

    def health(self, cpu_used_mb: int = 0) -> list[DeviceHealth]:
        if self.gpus:
            return [
                DeviceHealth(
                    index=i,
                    kind="cuda",
                    name=f"GPU {i}",
                    vram_total_mb=t,
                    vram_used_mb=t - f,
                    vram_free_mb=f,
                )
                for i, (t, f, _) in enumerate(self.gpus)
            ]
        total = self.cfg.cpu_memory_mb
        return [
            DeviceHealth(
                index=0,
                kind="cpu",
                name="cpu",
                vram_total_mb=total,
                vram_used_mb=cpu_used_mb,
                vram_free_mb=max(0, total - cpu_used_mb),
            )
        ]

    def close(self) -> None:
        pass


# -- the running neuron -------------------------------------------------------------------------


@dataclass
class Rig:
    neuron: Neuron
    url: str
    client: httpx.AsyncClient
    root: Path
    site: GuardedSite | None = None

    @property
    def registry(self) -> Any:
        return self.neuron.registry

    def model(self, name: str, fake: Mapping[str, Any] | None = None) -> Path:
        return model_dir(self.root, name, fake)

    async def load(self, path: Path | str, **spec: Any) -> httpx.Response:
        return await self.client.post("/models/load", json={"model_id": str(path), **spec})

    async def unload(self, model: str, force: bool = False) -> httpx.Response:
        return await self.client.post("/models/unload", json={"model_id": model, "force": force})

    async def status(self, model: str) -> str | None:
        for m in (await self.client.get("/models")).json():
            if m["id"] == model:
                return str(m["status"])
        return None

    async def info(self, model: str) -> dict[str, Any]:
        for m in (await self.client.get("/models")).json():
            if m["id"] == model:
                return dict(m)
        raise AssertionError(f"{model} not listed")

    async def wait_status(self, model: str, status: str, within: float = 5.0) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            rec = self.registry.records.get(model)
            if rec is not None and rec.status == status:
                return
            await asyncio.sleep(0.01)
        got = self.registry.records.get(model)
        raise AssertionError(f"{model} never became {status} (is {got and got.status})")

    def metric(self, name: str, **labels: str) -> float:
        v = self.neuron.metrics.registry.get_sample_value(name, labels)
        return 0.0 if v is None else v


async def until(pred: Callable[[], bool], within: float = 5.0) -> None:
    """Poll a condition on the loop (tests watch live state without hooks)."""
    deadline = time.monotonic() + within
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("condition never became true")
        await asyncio.sleep(0.005)


def chat_body(model: str, content: str = "hi", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


NeuronFactory = Callable[..., Awaitable[Rig]]


@pytest.fixture
async def start_neuron(tmp_path: Path) -> AsyncIterator[NeuronFactory]:
    """`await start_neuron(token=..., gpus=..., admission={...}, **config)` → a Rig."""
    runners: list[web.AppRunner] = []
    neurons: list[Neuron] = []
    clients: list[httpx.AsyncClient] = []

    async def factory(
        *,
        token: str | None = TOKEN,
        gpus: Sequence[tuple[int, int, str]] | None = None,
        restart_backoff: tuple[float, ...] = (0.01, 0.01, 0.01),
        unload_grace: float = 30.0,
        stop_grace: float = 2.0,
        stall_secs: float | None = None,
        estimate_mb: Callable[[Path, str], int | None] | None = None,
        tokenizer_for: Callable[[Path], Any] | None = CharTokenizer,
        **config: Any,
    ) -> Rig:
        data: dict[str, Any] = {
            "listen": "127.0.0.1:0",
            "cpu_memory_mb": 16000,
            "allowed_model_roots": ["/"],  # models live in temp dirs; roots have their own tests
            **config,
        }
        if token is not None:
            data.setdefault("auth", {})["token"] = token
        cfg = NeuronConfig.model_validate(data)
        neuron = Neuron(
            cfg,
            probe=FakeProbe(cfg, gpus),  # type: ignore[arg-type]
            supervisor=Supervisor(WORKER_CMD, stop_grace=stop_grace, stall_secs=stall_secs),
            tokenizer_for=tokenizer_for,
            estimate_mb=estimate_mb or (lambda path, quant: 1),
            restart_backoff=restart_backoff,
            unload_grace=unload_grace,
        )
        neurons.append(neuron)
        await neuron.start()
        runner = make_runner(neuron, shutdown_timeout=1)
        await runner.setup()
        site = make_site(neuron, runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = site.port
        url = f"http://127.0.0.1:{port}"
        client = httpx.AsyncClient(
            base_url=url, headers=AUTH if token else {}, timeout=30, trust_env=False
        )
        clients.append(client)
        root = tmp_path / f"models{len(neurons)}"
        root.mkdir()
        return Rig(neuron, url, client, root, site)

    yield factory
    for c in clients:
        await c.aclose()
    for n in neurons:
        await n.close()
    for r in runners:
        await r.cleanup()
