"""`helexa up --model file.gguf` for real (when llama_cpp is installed): the stack loads the GGUF
through the llamacpp harness and serves it through cortex as local/<stem>."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from pathlib import Path

import httpx
import openai
import pytest
from test_helexa_up import Up, up_cmd, up_env

from rig.net import free_port
from rig.require import require_module

pytestmark = pytest.mark.slow
SERVED = "local/tiny-Q8_0"


def test_helexa_up_serves_a_gguf_file(tmp_path: Path) -> None:
    require_module("llama_cpp", install="pip install 'helexa[llamacpp]'")
    pytest.importorskip("torch")
    from fixtures.gguf import write_gguf
    from fixtures.tiny import build_model

    gguf = write_gguf(
        build_model(tmp_path / "hf", "qwen3"), tmp_path / "m" / "tiny-Q8_0.gguf", "Q8_0"
    )
    ports = (free_port(), free_port(), free_port())
    home = tmp_path / "home"
    home.mkdir()
    proc = subprocess.Popen(
        up_cmd(home / "cfg", ports, str(gguf)),
        cwd=home,
        env=up_env(home),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    up = Up(proc, home / "cfg", f"http://127.0.0.1:{ports[0]}", "", "", ports)
    threading.Thread(target=up.pump, daemon=True).start()
    try:
        up.wait_for(rf"helexa: {SERVED} is loaded", 120)
        client = openai.OpenAI(
            base_url=f"{up.api}/v1",
            api_key=up.api_key(),
            http_client=httpx.Client(trust_env=False, timeout=60),
        )
        out = client.chat.completions.create(
            model=SERVED, messages=[{"role": "user", "content": "Hello"}], max_tokens=8
        )
        assert out.model == SERVED and out.usage is not None
        assert out.usage.completion_tokens > 0
        listed = httpx.get(
            f"{up.api}/v1/models/{SERVED}",
            headers={"Authorization": f"Bearer {up.api_key()}"},
            trust_env=False,
        ).json()
        assert (listed["harness"], listed["quant"]) == ("llamacpp", "Q8_0")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        log = home / "cfg" / "logs" / "neuron.log"
        if log.exists() and proc.returncode not in (0, None):
            print(f"--- {log} ---\n{log.read_text()[-3000:]}")
