"""neuron.toml (see docs/reference.md#configuration)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from helexa.config.loader import ConfigError, is_loopback
from helexa.config.neuron import (
    DEFAULT_PATH,
    NeuronConfig,
    load_neuron_settings,
    physical_memory_mb,
)


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "neuron.toml"
    p.write_text(text)
    return p


def test_defaults() -> None:
    c = load_neuron_settings(None, explicit=False, environ={})
    assert c.listen == "0.0.0.0:13131"
    assert c.bind_url == "http://localhost:13131"
    assert c.default_source == "huggingface"
    assert (c.max_prompt_tokens, c.max_output_tokens, c.max_body_mb) == (16384, 8192, 8)
    assert c.cache_dir is None
    assert c.shutdown_grace_secs == 60
    assert c.auth.token is None
    assert c.sources == {"helexa": "https://registry.helexa.ai"}
    adm = c.admission
    assert (adm.max_in_flight, adm.max_queue_depth, adm.max_wait_secs) == (8, 16, 120)
    assert c.default_models == []
    assert c.enabled_harnesses() is None
    assert c.cpu_memory_mb == physical_memory_mb() * 3 // 4 > 0
    assert Path("/etc/neuron/neuron.toml") == DEFAULT_PATH


def test_missing_default_path_runs_on_defaults(tmp_path: Path) -> None:
    c = load_neuron_settings(tmp_path / "absent.toml", explicit=False, environ={})
    assert c.listen == "0.0.0.0:13131"


def test_missing_explicit_path_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_neuron_settings(tmp_path / "absent.toml", explicit=True, environ={})


def test_full_file(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        """
listen = "127.0.0.1:9999"
bind_url = "http://gpu1:9999/"
default_source = "mirror"
max_prompt_tokens = 100
max_output_tokens = 50
max_body_mb = 8
cache_dir = "~/models"
cpu_memory_mb = 2048
shutdown_grace_secs = 5

[auth]
token = "s3cret"

[sources]
mirror = "https://hf-mirror.example/"

[admission]
max_in_flight = 2
max_queue_depth = 4
max_wait_secs = 9

[[default_models]]
model_id = "Qwen/Qwen3-0.6B"
quant = "bf16"
devices = [0]

[[default_models]]
model_id = "/srv/models/tiny"
served_model_id = "me/tiny"
max_in_flight = 3

[[harnesses]]
name = "candle"

[harness.candle]
flash_attn = true
""",
    )
    c = load_neuron_settings(p, explicit=True, environ={})
    assert c.listen == "127.0.0.1:9999"
    assert c.bind_url == "http://gpu1:9999"
    assert c.default_source == "mirror"
    assert (c.max_prompt_tokens, c.max_output_tokens, c.max_body_mb) == (100, 50, 8)
    assert c.cache_dir == str(Path("~/models").expanduser())
    assert (c.cpu_memory_mb, c.shutdown_grace_secs) == (2048, 5)
    assert c.auth.token == "s3cret"
    assert c.sources == {
        "helexa": "https://registry.helexa.ai",
        "mirror": "https://hf-mirror.example",
    }
    assert (c.admission.max_in_flight, c.admission.max_queue_depth) == (2, 4)
    assert c.admission.max_wait_secs == 9
    m0, m1 = c.default_models
    assert (m0.model_id, m0.quant, m0.devices) == ("Qwen/Qwen3-0.6B", "bf16", [0])
    assert (m1.served_model_id, m1.max_in_flight) == ("me/tiny", 3)
    assert c.enabled_harnesses() == {"torch"}


def test_legacy_port(tmp_path: Path) -> None:
    c = load_neuron_settings(write(tmp_path, "port = 14000\n"), explicit=True, environ={})
    assert c.listen == "0.0.0.0:14000"
    both = write(tmp_path, 'port = 14000\nlisten = "127.0.0.1:1"\n')
    assert load_neuron_settings(both, explicit=True, environ={}).listen == "127.0.0.1:1"


def test_env_overrides(tmp_path: Path) -> None:
    p = write(tmp_path, 'max_prompt_tokens = 10\n[auth]\ntoken = "file"\n')
    env = {
        "NEURON_TOKEN": "from-env",
        "NEURON_MAX_PROMPT_TOKENS": "4096",
        "NEURON_ADMISSION__MAX_IN_FLIGHT": "3",
        "NEURON_SOURCES__MIRROR": "https://m.example",
        "NEURON_CONFIG": "/ignored",
        "OTHER": "x",
    }
    c = load_neuron_settings(p, explicit=True, environ=env)
    assert c.auth.token == "from-env"
    assert c.max_prompt_tokens == 4096
    assert c.admission.max_in_flight == 3
    assert c.sources["mirror"] == "https://m.example"


def test_numeric_token_stays_text() -> None:
    c = load_neuron_settings(None, explicit=False, environ={"NEURON_AUTH__TOKEN": "1234"})
    assert c.auth.token == "1234"
    assert load_neuron_settings(
        None, explicit=False, environ={"NEURON_TOKEN": "42"}
    ).auth.token == ("42")


@pytest.mark.parametrize(
    ("text", "key", "fragment"),
    [
        ('listen = "nope"\n', "listen", "expected HOST:PORT"),
        ("max_prompt_tokens = 0\n", "max_prompt_tokens", "greater than or equal to 1"),
        ('bind_url = "gpu1:13131"\n', "bind_url", "http(s) base URL"),
        ('[sources]\nbad = "ftp://x"\n', "sources", "http(s) base URL"),
        ('default_source = "acme"\n', "default_source", "'acme' is not a configured source"),
        (
            '[[default_models]]\nmodel_id = "Qwen"\n',
            "default_models.0.model_id",
            "model id 'Qwen' is missing the '/' between org and name",
        ),
        (
            '[[default_models]]\nmodel_id = "acme:Q/x"\n',
            "default_models",
            "source scheme 'acme' is not configured (known: helexa, huggingface)",
        ),
        (
            '[[default_models]]\nmodel_id = "Q/x"\n[[default_models]]\nmodel_id = "hf:Q/x"\n'
            '[sources]\nhf = "https://h.example"\n',
            "default_models",
            "served id 'Q/x' is listed twice",
        ),
        ("[[default_models]]\nquant = 'bf16'\n", "default_models.0.model_id", "Field required"),
        ("[admission]\nmax_in_flight = 0\n", "admission.max_in_flight", "greater than"),
    ],
)
def test_errors_name_file_and_key(tmp_path: Path, text: str, key: str, fragment: str) -> None:
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as ei:
        load_neuron_settings(p, explicit=True, environ={})
    msg = str(ei.value)
    assert msg.startswith(f"{p}: key '{key}'"), msg
    assert fragment in msg


def test_invalid_toml_quotes_the_line(tmp_path: Path) -> None:
    p = write(tmp_path, 'listen = "0.0.0.0:1"\nmax_body_mb = = 3\n')
    with pytest.raises(ConfigError, match="max_body_mb = = 3"):
        load_neuron_settings(p, explicit=True, environ={})


def test_unknown_keys_and_harnesses_warn(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    p = write(
        tmp_path,
        'colour = "blue"\n[[default_models]]\nmodel_id = "Q/x"\nspeed = 3\n'
        '[[harnesses]]\nname = "vllm"\n[[harnesses]]\nname = "torch"\n[harness.vllm]\nx = 1\n',
    )
    with caplog.at_level(logging.WARNING, logger="helexa.config"):
        c = load_neuron_settings(p, explicit=True, environ={})
    text = caplog.text
    assert "unknown key 'colour'" in text
    assert "unknown key 'default_models[0].speed'" in text
    assert "unknown harness 'vllm'" in text
    assert "harness." not in text  # [harness.<name>] tables are accepted silently
    assert c.enabled_harnesses() == {"torch"}


def test_direct_construction_has_defaults() -> None:
    c = NeuronConfig()
    assert c.sources["helexa"] == "https://registry.helexa.ai"
    assert c.cpu_memory_mb > 0


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("[::]", False),
        ("10.0.0.5", False),
        ("neuron.example", False),
    ],
)
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


@pytest.mark.parametrize(
    "text",
    [
        "[auth]\ntoken = s3cret-unquoted-value\n",  # a TOML syntax error quotes its line
        '[auth]\ntoken = "s3cret-unquoted-value\n',
        '[sources.m]\nendpoint = "https://m.example"\nhf_token = s3cret-unquoted-value\n',
        # a value pasted under the wrong key: the error quotes it, the scrub removes it
        'bind_url = "s3cret-unquoted-value"\n[auth]\ntoken = "s3cret-unquoted-value"\n',
    ],
)
def test_config_errors_never_echo_secret_values(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as ei:
        load_neuron_settings(path, explicit=True, environ={})
    msg = str(ei.value)
    assert str(path) in msg
    assert "s3cret" not in msg, msg


def test_env_token_is_never_echoed(tmp_path: Path) -> None:
    env = {"NEURON_TOKEN": "s3cret-env-token", "NEURON_LISTEN": "s3cret-env-token"}
    with pytest.raises(ConfigError) as ei:
        load_neuron_settings(None, explicit=False, environ=env)
    assert "listen" in str(ei.value) and "s3cret" not in str(ei.value)


def test_model_roots_default_to_the_cache_and_default_model_paths(tmp_path: Path) -> None:
    cfg = NeuronConfig.model_validate(
        {"cache_dir": str(tmp_path / "hub"), "default_models": [{"model_id": "/srv/m/Qwen"}]}
    )
    assert cfg.model_roots() == [str(tmp_path / "hub"), "/srv/m/Qwen"]
    cfg = NeuronConfig.model_validate({"allowed_model_roots": ["/models"]})
    assert cfg.model_roots() == ["/models"]
    with pytest.raises(ValueError, match="absolute"):
        NeuronConfig.model_validate({"allowed_model_roots": ["models"]})
