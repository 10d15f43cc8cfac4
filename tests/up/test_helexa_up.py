"""`helexa up` as a user runs it: a real process that writes its files,
starts a real neuron (tiny model, real engine worker) and a real cortex, prints the URLs, serves
the openai SDK, restarts a killed neuron, fails fast on a hub model that is not cached, and stops
everything on SIGTERM. One stack is shared by the module; the SIGTERM test runs last."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from helexa.cli import main
from helexa.config.catalogue import Catalogue
from helexa.up import configs
from helexa.up.preflight import config_warnings
from helexa.version import version_line
from rig.net import free_port
from rig.procs import children, cmdline, wait_gone

pytest.importorskip("torch")
pytest.importorskip("transformers")
openai = pytest.importorskip("openai")

pytestmark = [pytest.mark.torch, pytest.mark.slow]

MODEL_DIR = "tinyup"
SERVED = f"local/{MODEL_DIR}"


def up_env(home: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.lower().endswith("_proxy") and not k.startswith(("NEURON_", "CORTEX_", "HF_"))
    }
    env.update(
        HF_HUB_OFFLINE="1",
        HF_HOME=str(home / "hf"),  # an empty cache: no hub model is available
        CUDA_VISIBLE_DEVICES="",
        CORTEX_GATEWAY__POLL_INTERVAL_SECS="0.5",
        CORTEX_GATEWAY__PROBE_TIMEOUT_SECS="2",
        HELEXA_WORKER_LOG_LEVEL="warning",
    )
    env.pop("HELEXA_API_KEY", None)
    env.pop("HELEXA_NEURON_WORKER_CMD", None)
    return env


@dataclass
class Up:
    proc: subprocess.Popen[str]
    config_dir: Path
    api: str
    neuron: str
    metrics: str
    ports: tuple[int, int, int]
    lines: list[str] = field(default_factory=list)
    _q: queue.Queue[str] = field(default_factory=queue.Queue)

    def pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._q.put(line.rstrip("\n"))

    def wait_for(self, pattern: str, secs: float) -> str:
        """The first line (already seen or to come) matching `pattern`."""
        rx = re.compile(pattern)
        for line in self.lines:
            if rx.search(line):
                return line
        deadline = time.monotonic() + secs
        while time.monotonic() < deadline:
            try:
                line = self._q.get(timeout=0.1)
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
                continue
            self.lines.append(line)
            if rx.search(line):
                return line
        raise AssertionError(
            f"no line matching {pattern!r} within {secs}s; output so far:\n" + "\n".join(self.lines)
        )

    def api_key(self) -> str:
        cortex = tomllib.loads((self.config_dir / "cortex.toml").read_text())
        return str(cortex["entitlements"]["keys"][0]["key"])

    def text(self) -> str:
        while True:
            try:
                self.lines.append(self._q.get_nowait())
            except queue.Empty:
                return "\n".join(self.lines)


def up_cmd(config_dir: Path, ports: tuple[int, int, int], *models: str) -> list[str]:
    port, neuron_port, metrics_port = ports
    cmd = [sys.executable, "-m", "helexa.cli", "up", "--config-dir", str(config_dir)]
    for m in models:
        cmd += ["--model", m]
    return [
        *cmd,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--neuron-port",
        str(neuron_port),
        "--metrics-port",
        str(metrics_port),
        "--startup-timeout",
        "60",
    ]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fixtures.tiny import build_model

    return build_model(tmp_path_factory.mktemp("upmodel") / MODEL_DIR, "qwen3", seed=0)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, tiny: Path) -> Iterator[Up]:
    home = tmp_path_factory.mktemp("uphome")
    ports = (free_port(), free_port(), free_port())
    config_dir = home / "cfg"
    # A relative model path: helexa up must make it absolute for the children.
    rel = os.path.relpath(tiny, home)
    proc = subprocess.Popen(
        up_cmd(config_dir, ports, rel),
        cwd=home,
        env=up_env(home),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    up = Up(
        proc,
        config_dir,
        api=f"http://127.0.0.1:{ports[0]}",
        neuron=f"http://127.0.0.1:{ports[1]}",
        metrics=f"http://127.0.0.1:{ports[2]}/metrics",
        ports=ports,
    )
    threading.Thread(target=up.pump, daemon=True).start()
    try:
        up.wait_for(rf"helexa: {re.escape(SERVED)} is loaded", 90)
        yield up
    finally:
        if proc.poll() is None:
            for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 5)):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        for d in ("neuron", "cortex"):
            log = config_dir / "logs" / f"{d}.log"
            if log.exists() and proc.returncode not in (0, None):
                print(f"--- {log} ---\n{log.read_text()[-3000:]}")


def test_prints_urls_and_served_ids(stack: Up) -> None:
    text = stack.text()
    assert f"{stack.api}/v1" in text
    assert stack.metrics in text
    assert stack.neuron in text
    assert f"API key  {stack.api_key()}" in text
    assert re.search(rf"^\s+{re.escape(SERVED)}\b", text, re.M)
    assert f"curl {stack.api}/v1/chat/completions" in text
    assert f'"model":"{SERVED}"' in text
    for alias in ("helexa/small", "helexa/balanced", "helexa/large"):
        assert alias in text
    # what was asked for comes first; the catalogue models that are not downloaded (an empty
    # offline cache here) are one line, not three curl examples
    models = text.split("\nmodels:\n", 1)[1].splitlines()
    assert models[0].startswith(f"  {SERVED}")
    assert text.count("curl ") == 1
    assert (
        "  3 more catalogue models are not downloaded and HF_HUB_OFFLINE is set: "
        "Qwen/Qwen3-0.6B (helexa/small), Qwen/Qwen3-4B (helexa/balanced), "
        "Qwen/Qwen3-8B (helexa/large); to use one, download it with `hf download Qwen/Qwen3-0.6B`"
    ) in text


def test_files_are_private_and_share_one_token(stack: Up, tiny: Path) -> None:
    for name in ("cortex.toml", "models.toml", "neuron.toml"):
        assert (stack.config_dir / name).stat().st_mode & 0o777 == 0o600
    cortex = tomllib.loads((stack.config_dir / "cortex.toml").read_text())
    neuron = tomllib.loads((stack.config_dir / "neuron.toml").read_text())
    catalogue = tomllib.loads((stack.config_dir / "models.toml").read_text())
    token = neuron["auth"]["token"]
    assert len(token) >= 32
    assert [n["token"] for n in cortex["neurons"] if n["name"] == "local"] == [token]
    entry = [m for m in catalogue["models"] if m["id"] == SERVED]
    assert entry == [{"id": SERVED, "path": str(tiny)}]
    assert neuron["default_models"] == [{"model_id": str(tiny)}]
    assert {"Qwen/Qwen3-0.6B", "Qwen/Qwen3-4B", "Qwen/Qwen3-8B"} <= {
        m["id"] for m in catalogue["models"]
    }
    assert catalogue["aliases"]["helexa/small"] == "Qwen/Qwen3-0.6B"
    # The neuron really requires the token.
    assert httpx.get(f"{stack.neuron}/models", trust_env=False).status_code == 401


def test_openai_sdk_chat_through_cortex(stack: Up) -> None:
    client = openai.OpenAI(
        base_url=f"{stack.api}/v1",
        api_key=stack.api_key(),
        http_client=httpx.Client(trust_env=False, timeout=30),
    )
    raw = client.chat.completions.with_raw_response.create(
        model=SERVED, messages=[{"role": "user", "content": "Hello"}], max_tokens=8
    )
    out = raw.parse()
    assert raw.headers["x-helexa-node"] == "local"
    assert out.model == SERVED
    assert out.choices[0].message.content
    assert out.usage is not None and out.usage.completion_tokens > 0


def test_hub_model_not_cached_fails_fast_with_a_clear_error(stack: Up) -> None:
    t0 = time.monotonic()
    r = httpx.post(
        f"{stack.api}/v1/chat/completions",
        json={"model": "helexa/small", "messages": [{"role": "user", "content": "Hi"}]},
        headers={"authorization": f"Bearer {stack.api_key()}"},  # helexa up requires a key
        trust_env=False,
        timeout=30,
    )
    assert time.monotonic() - t0 < 10
    err = r.json()["error"]
    assert r.status_code == 502
    assert err["code"] == "cold_load_failed"
    assert err["neuron_code"] == "model_source_not_found"
    # the client is told how to make it available, in cortex's words
    assert "hf download Qwen/Qwen3-0.6B" in err["message"]
    # and helexa up told the user too
    assert "hf download Qwen/Qwen3-0.6B" in stack.text()


def test_second_run_adds_only_the_missing_model(stack: Up, tiny: Path) -> None:
    """Same dir, same (busy) ports: the entries are appended, then it refuses to start."""
    before = {n: (stack.config_dir / n).read_text() for n in ("models.toml", "neuron.toml")}
    r = subprocess.run(
        up_cmd(stack.config_dir, stack.ports, str(tiny), "Org/Extra-1B"),
        env=up_env(stack.config_dir.parent),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 1, r.stdout + r.stderr
    assert "already in use" in r.stderr
    assert "added Org/Extra-1B" in r.stdout and SERVED not in r.stdout
    for name, old in before.items():
        new = (stack.config_dir / name).read_text()
        assert new.startswith(old)  # comments and earlier entries untouched
        assert new.count("Org/Extra-1B") == 1
        assert (stack.config_dir / name).stat().st_mode & 0o777 == 0o600
    catalogue = tomllib.loads((stack.config_dir / "models.toml").read_text())
    assert [m["id"] for m in catalogue["models"]].count(SERVED) == 1
    neuron = tomllib.loads((stack.config_dir / "neuron.toml").read_text())
    assert [d["model_id"] for d in neuron["default_models"]] == [str(tiny), "Org/Extra-1B"]


def test_killed_neuron_is_restarted_and_service_resumes(stack: Up) -> None:
    mine = children(stack.proc.pid)
    neuron_pid = next(p for p in mine if "helexa.neuron.cli" in cmdline(p))
    workers = children(neuron_pid)
    assert workers, "the pre-warmed model should have a worker"
    os.kill(neuron_pid, signal.SIGKILL)
    stack.wait_for(rf"neuron \(pid {neuron_pid}\) was killed by SIGKILL$", 10)
    stack.wait_for(r"restarting neuron$", 10)
    # The orphaned worker sees its socket close and leaves.
    assert wait_gone(workers, 15) == []
    deadline = time.monotonic() + 60
    last: object = None
    while time.monotonic() < deadline:
        try:
            r = httpx.post(
                f"{stack.api}/v1/chat/completions",
                json={
                    "model": SERVED,
                    "messages": [{"role": "user", "content": "Hi"}],
                    "max_tokens": 4,
                },
                headers={"authorization": f"Bearer {stack.api_key()}"},
                trust_env=False,
                timeout=30,
            )
            if r.status_code == 200:
                break
            last = r.text
        except httpx.TransportError as e:
            last = e
        time.sleep(0.25)
    else:
        raise AssertionError(f"service did not resume: {last}\n{stack.text()}")
    assert r.json()["choices"][0]["message"]["content"]


def test_sigterm_stops_everything(stack: Up) -> None:
    """Runs last: the stack is gone afterwards."""
    procs = children(stack.proc.pid)
    assert len(procs) == 2
    workers = [w for p in procs for w in children(p)]
    assert workers
    stack.proc.send_signal(signal.SIGTERM)
    assert stack.proc.wait(60) == 0
    assert wait_gone(procs + workers, 10) == []
    assert "helexa: stopped" in stack.text()


def test_version_and_help() -> None:
    r = CliRunner().invoke(main, ["--version"])
    assert r.exit_code == 0 and r.output.strip() == version_line("helexa")
    r = CliRunner().invoke(main, ["up", "--help"])
    assert r.exit_code == 0
    for opt in ("--config-dir", "--model", "--host", "--port", "--neuron-port", "--metrics-port"):
        assert opt in r.output
    assert "Example" in r.output


def test_bad_model_id_is_a_usage_error(tmp_path: Path) -> None:
    r = CliRunner().invoke(main, ["up", "--config-dir", str(tmp_path), "--model", "nope"])
    assert r.exit_code == 2
    assert "missing the '/' between org and name" in r.output


def test_gguf_model_without_llama_cpp_is_refused_before_anything_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "llama_cpp" else real(n, *a)
    )
    gguf = tmp_path / "m.Q4_K_M.gguf"
    gguf.write_bytes(b"GGUF")
    r = CliRunner().invoke(main, ["up", "--config-dir", str(tmp_path / "c"), "--model", str(gguf)])
    assert r.exit_code == 2
    assert "pip install 'helexa[llamacpp]'" in r.output
    assert not (tmp_path / "c" / "neuron.toml").exists()


def test_gguf_model_gets_llamacpp_entries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: object() if n == "llama_cpp" else real(n, *a)
    )
    gguf = tmp_path / "Qwen3-8B-Q4_K_M-00001-of-00002.gguf"
    gguf.write_bytes(b"GGUF")
    w = configs.ensure(tmp_path / "c", [configs.parse_model_arg(str(gguf))])
    assert w.added == ["local/Qwen3-8B-Q4_K_M"]
    entry = configs.read(tmp_path / "c" / "models.toml")["models"][-1]
    assert entry == {"id": "local/Qwen3-8B-Q4_K_M", "path": str(gguf), "harness": "llamacpp"}
    warm = configs.read(tmp_path / "c" / "neuron.toml")["default_models"]
    assert warm == [{"model_id": str(gguf), "harness": "llamacpp"}]
    # what cortex and the neuron will read: the catalogue entry and the load spec validate
    assert config_warnings(tmp_path / "c", {}) == []
    spec = Catalogue.model_validate({"models": [entry]}).models[0].load_spec([0])
    assert (spec.model_id, spec.harness, spec.served_model_id) == (
        str(gguf),
        "llamacpp",
        "local/Qwen3-8B-Q4_K_M",
    )


def test_ensure_appends_and_keeps_comments(tmp_path: Path) -> None:
    d = tmp_path / "c"
    w = configs.ensure(d, [])
    assert len(w.created) == 3 and w.added == []
    first = (d / "models.toml").read_text()
    assert first.startswith("#")
    hub = configs.parse_model_arg("helexa:Org/Name")
    w = configs.ensure(d, [hub])
    assert w.created == [] and w.added == ["Org/Name"]
    text = (d / "models.toml").read_text()
    assert text.startswith(first)
    cat = tomllib.loads(text)
    assert {"id": "Org/Name", "source": "helexa"} in cat["models"]
    assert configs.ensure(d, [hub]).added == []
    neuron = tomllib.loads((d / "neuron.toml").read_text())
    assert neuron["default_models"] == [{"model_id": "helexa:Org/Name"}]


ROOT = Path(__file__).resolve().parents[2]


def test_dashboard_covers_the_cortex_metrics() -> None:
    """Every cortex_* name the dashboard queries exists, and the operational ones are shown."""
    import json

    dash = json.loads((ROOT / "packaging/grafana/cortex-dashboard.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    used = {
        re.sub(r"_(bucket|sum|count)$", "", m) for e in exprs for m in re.findall(r"cortex_\w+", e)
    }
    source = (ROOT / "src/helexa/cortex/metrics.py").read_text()
    exported = set(re.findall(r'"(cortex_\w+)"', source))
    assert used <= exported
    assert exported - used <= {
        "cortex_spend_prompt_tokens_total",
        "cortex_spend_completion_tokens_total",
    }
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"])


def test_systemd_units_run_the_console_scripts() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["helexa"] == "helexa.cli:main"
    for unit, prog in (("cortex.service", "cortex"), ("neuron.service", "neuron")):
        text = (ROOT / "packaging/systemd" / unit).read_text()
        assert re.search(
            rf"^ExecStart=\S+/{prog} serve --config /etc/{prog}/{prog}.toml$", text, re.M
        )
        assert "RestartPreventExitStatus=2" in text and "KillSignal=SIGTERM" in text
        assert prog in scripts
