"""`helexa up` without a running stack: config warnings on the terminal, the log lines and exit
words of a failed child, the banner's model list, and what the generated files cite."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from helexa.cli import main
from helexa.up import configs
from helexa.up.banner import Served, model_lines
from helexa.up.supervise import Child, Stack
from helexa.wire.advice import get_model_advice
from rig.net import free_port, listening_port

ROOT = Path(__file__).resolve().parents[2]
API = "http://127.0.0.1:31313"


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port something listens on: `helexa up` stops there, after reading its files."""
    with listening_port() as port:
        yield port


def up(config_dir: Path, port: int) -> list[str]:
    return ["up", "--config-dir", str(config_dir), "--host", "127.0.0.1", "--port", str(port)]


def test_config_warnings_are_shown_on_the_terminal(tmp_path: Path, busy_port: int) -> None:
    d = tmp_path / "c"
    configs.ensure(d, [])
    with (d / "cortex.toml").open("a") as f:
        f.write("\n[gatewy]\nlisten = '0.0.0.0:1'\n")
    with (d / "neuron.toml").open("a") as f:
        f.write("\n[admision]\nmax_in_flight = 2\n")
    r = CliRunner().invoke(main, up(d, busy_port), env={"HF_HUB_OFFLINE": "1"})
    assert r.exit_code == 1 and "already in use" in r.stderr
    assert f"helexa: warning: {d / 'cortex.toml'}: unknown key 'gatewy' ignored" in r.stderr
    assert f"helexa: warning: {d / 'neuron.toml'}: unknown key 'admision' ignored" in r.stderr


def test_config_error_exits_2_before_starting_anything(tmp_path: Path, busy_port: int) -> None:
    d = tmp_path / "c"
    configs.ensure(d, [])
    text = (
        (d / "neuron.toml")
        .read_text()
        .replace("shutdown_grace_secs = 30", "shutdown_grace_secs = 'soon'")
    )
    (d / "neuron.toml").write_text(text)
    r = CliRunner().invoke(main, up(d, busy_port))
    assert r.exit_code == 2
    assert "helexa: config error:" in r.stderr and "shutdown_grace_secs" in r.stderr
    assert "already in use" not in r.stderr


def test_generated_files_cite_only_what_is_shipped(tmp_path: Path) -> None:
    configs.ensure(tmp_path, [])
    headings = set(re.findall(r"^#+ (.+)$", (ROOT / "README.md").read_text(), re.M))
    for name in ("cortex.toml", "models.toml", "neuron.toml"):
        text = (tmp_path / name).read_text()
        assert "§" not in text and "contract" not in text.lower(), name
        for cited in re.findall(r'README\'s "([^"]+)"', text):
            assert cited in headings, (name, cited)


# -- a child that fails -------------------------------------------------------------------------


def stack_with(tmp_path: Path, code: str, said: list[str]) -> tuple[Stack, Child]:
    url = f"http://127.0.0.1:{free_port()}"  # nobody listens there: the neuron never answers
    log = tmp_path / "neuron.log"
    log.write_text("".join(f"an earlier run's line {i}\n" for i in range(40)))
    neuron = Child("neuron", [sys.executable, "-c", code], {}, log, grace=1)
    cortex = Child("cortex", [sys.executable, "-c", "pass"], {}, tmp_path / "cortex.log", 1)
    return Stack(neuron, cortex, url, url, None, said.append, startup_timeout=30), neuron


def test_a_failed_child_shows_this_runs_log_lines_only(tmp_path: Path) -> None:
    said: list[str] = []
    stack, _ = stack_with(
        tmp_path, "import sys; print('bad thing happened', flush=True); sys.exit(3)", said
    )
    assert stack.run() == 1
    text = "\n".join(said)
    assert "helexa: neuron exited with code 3 while starting" in text
    assert "bad thing happened" in text
    assert "earlier run" not in text


def test_a_signal_exit_is_named(tmp_path: Path) -> None:
    said: list[str] = []
    code = "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"
    stack, _ = stack_with(tmp_path, code, said)
    assert stack.run() == 1
    assert "helexa: neuron was killed by SIGKILL while starting" in said
    assert not any("code -9" in line for line in said)
    # nothing from this run in the log: no earlier run's lines instead
    assert not any("earlier run" in line for line in said)


# -- the banner's models ------------------------------------------------------------------------

CATALOGUE = [
    Served("Qwen/Qwen3-0.6B"),
    Served("Qwen/Qwen3-4B"),
    Served("local/mine", loaded=True),
    Served("Org/Asked"),
    Served("helexa/small", alias_of="Qwen/Qwen3-0.6B"),
    Served("helexa/balanced", alias_of="Qwen/Qwen3-4B"),
    Served("helexa/mine", alias_of="local/mine"),
]
MISSING = {"Qwen/Qwen3-0.6B", "Qwen/Qwen3-4B"}


def test_banner_lists_the_asked_model_first_and_hides_what_is_not_downloaded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    lines = model_lines(CATALOGUE, ["Org/Asked"], MISSING, API, "")
    assert lines[0] == "models:"
    assert lines[1] == "  Org/Asked"
    assert lines[2].startswith(f"    curl {API}/v1/chat/completions ")
    assert '"model":"Org/Asked"' in lines[2]
    assert lines[3:] == [
        "  local/mine   (loaded)",
        "  helexa/mine   (alias of local/mine)",
        "  2 more catalogue models are not downloaded (each downloads on its first request): "
        "Qwen/Qwen3-0.6B (helexa/small), Qwen/Qwen3-4B (helexa/balanced)",
    ]


def test_banner_offline_says_how_to_get_them_in_the_shared_words(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    lines = model_lines(CATALOGUE, ["Qwen/Qwen3-4B"], MISSING, API, "")
    assert lines[1] == (
        "  Qwen/Qwen3-4B   (not downloaded and HF_HUB_OFFLINE is set: "
        f"{get_model_advice('Qwen/Qwen3-4B')})"
    )
    assert lines[-1] == (
        "  1 more catalogue model is not downloaded and HF_HUB_OFFLINE is set: "
        f"Qwen/Qwen3-0.6B (helexa/small); to use one, {get_model_advice('Qwen/Qwen3-0.6B')}"
    )
    assert "  helexa/balanced   (alias of Qwen/Qwen3-4B)" in lines


# -- the README's first commands ----------------------------------------------------------------


def test_readme_starts_from_a_clone_and_gives_cpu_hosts_their_own_torch_line() -> None:
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"```sh\n(.*?)```", readme, re.S)
    assert block is not None
    cmds = [ln for ln in block.group(1).splitlines() if ln and not ln.startswith("#")]
    assert cmds[0].startswith("git clone ") and cmds[0].endswith("&& cd helexa")
    ci = (ROOT / ".ci/run").read_text()
    pin = re.search(r"pip install -q (torch==\S+)", ci)
    assert pin is not None
    cpu = f"pip install {pin.group(1)} --index-url https://download.pytorch.org/whl/cpu"
    assert cpu in cmds  # the CPU build, at the version the tests pin
    assert "helexa up --model Qwen/Qwen3-0.6B" in cmds[cmds.index(cpu) + 1]
    # the test command is what CI runs: the same torch pin, the test extras, pytest
    extras = "pip install -e '.[test,neuron,acp]'"
    assert cmds[-1] == f"pip install {pin.group(1)} && {extras} && pytest"
    assert "pip install -q -e '.[test,neuron,acp]'" in ci and re.search(r"^pytest\b", ci, re.M)
