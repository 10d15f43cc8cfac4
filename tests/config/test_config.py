"""cortex.toml and models.toml (docs/reference.md#configuration)."""

from __future__ import annotations

import logging
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from helexa.config.catalogue import Catalogue, load_catalogue
from helexa.config.cortex import load_settings
from helexa.config.loader import ConfigError, parse_env_value

CORTEX_BIN = Path(sys.executable).with_name("cortex")


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# ---- catalogue unit cases -------------------------------------------------------------


def parse_catalogue(text: str) -> Catalogue:
    return Catalogue.model_validate(tomllib.loads(text))


def test_source_defaults_to_none() -> None:
    cat = parse_catalogue('[[models]]\nid = "Qwen/Qwen3-30B"\nharness = "candle"\n')
    m = cat.models[0]
    assert m.source is None and m.path is None
    assert m.harness == "torch"  # candle is an alias of torch
    assert (m.min_devices, m.residency_priority, m.pinned_on, m.vram_mb) == (1, 100, [], None)


def test_source_round_trips_through_toml() -> None:
    cat = parse_catalogue(
        '[[models]]\nid = "Helexa/Qwen3.6-27B-Uncensored"\nharness = "candle"\nsource = "helexa"\n'
    )
    assert cat.models[0].source == "helexa"
    assert cat.models[0].load_id() == "helexa:Helexa/Qwen3.6-27B-Uncensored"


def test_aliases_resolve_and_pass_through() -> None:
    cat = Catalogue.model_validate({"aliases": {"helexa/small": "Qwen/Qwen3-1.7B"}})
    assert cat.resolve_alias("helexa/small") == "Qwen/Qwen3-1.7B"
    assert cat.resolve_alias("Qwen/Qwen3-8B") == "Qwen/Qwen3-8B"


def test_aliases_are_flat_no_chaining() -> None:
    cat = Catalogue.model_validate({"aliases": {"a/a": "b/b", "b/b": "c/c"}})
    assert cat.resolve_alias("a/a") == "b/b"


def test_aliases_table_round_trips_through_toml(tmp_path: Path) -> None:
    path = write(
        tmp_path / "models.toml",
        '[aliases]\n"helexa/small" = "Qwen/Qwen3-1.7B"\n"helexa/large" = "Qwen/Qwen3.6-27B"\n',
    )
    cat = load_catalogue(path)
    assert cat.resolve_alias("helexa/small") == "Qwen/Qwen3-1.7B"
    assert cat.resolve_alias("helexa/large") == "Qwen/Qwen3.6-27B"
    # Back out to TOML and in again: the same table.
    again = "[aliases]\n" + "".join(f'"{k}" = "{v}"\n' for k, v in cat.aliases.items())
    assert parse_catalogue(again).aliases == cat.aliases


def test_full_profile_parses(tmp_path: Path) -> None:
    path = write(
        tmp_path / "models.toml",
        """
[[models]]
id = "Qwen/Qwen3.6-27B"
quant = "bf16"
vram_mb = 45000
min_devices = 2
min_device_vram_mb = 24000
pinned_on = ["beast"]
residency_priority = 50
capabilities = ["text", "vision"]
max_in_flight = 2
max_queue_depth = 8
max_wait_secs = 30
cost = { input = 0.0, output = 1.5 }
limit = { context = 999999, output = 1 }

[[models]]
id = "local/tiny"
path = "/srv/models/tiny"
""",
    )
    cat = load_catalogue(path)
    big = cat.get("Qwen/Qwen3.6-27B")
    assert big is not None
    assert (big.vram_mb, big.min_devices, big.min_device_vram_mb) == (45000, 2, 24000)
    assert big.pinned_on == ["beast"] and big.residency_priority == 50
    assert big.cost is not None and big.cost.as_wire() == {"input": 0.0, "output": 1.5}
    tiny = cat.get("local/tiny")
    assert tiny is not None and tiny.load_id() == "/srv/models/tiny"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('[[models]]\nid = "a/b"\n[aliases]\n"a/b" = "c/d"\n', "alias 'a/b'"),
        ('[[models]]\nid = "a/b"\n[[models]]\nid = "a/b"\n', "duplicate model id 'a/b'"),
        ('[[models]]\nid = "a/b"\nsource = "hf"\npath = "/x"\n', "not both"),
        ('[[models]]\nid = "a/b"\npath = "relative/dir"\n', "absolute"),
        ('[[models]]\nid = "a/b"\nvram_mb = -1\n', "models.0.vram_mb"),
        ('[[models]]\nid = "a/b"\nmin_devices = 0\n', "models.0.min_devices"),
        ('[[models]]\nid = "a/b"\nharness = "vllm"\n', "models.0.harness"),
        ("[[models]]\nvram_mb = 1\n", "models.0.id"),
    ],
)
def test_invalid_catalogue_is_a_config_error_naming_file_and_key(
    tmp_path: Path, text: str, needle: str
) -> None:
    path = write(tmp_path / "models.toml", text)
    with pytest.raises(ConfigError) as e:
        load_catalogue(path)
    assert str(path) in str(e.value)
    assert needle in str(e.value)


def test_missing_catalogue_is_empty_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        cat = load_catalogue(tmp_path / "nope.toml")
    assert cat.models == [] and cat.aliases == {}
    assert "nope.toml" in caplog.text


# ---- models_config location --------------------------------------------------------------------


def test_models_config_is_found_next_to_cortex_toml_from_another_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    etc = tmp_path / "etc"
    write(etc / "cortex.toml", 'models_config = "models.toml"\n')
    write(etc / "models.toml", '[[models]]\nid = "Qwen/Qwen3-8B"\n')
    elsewhere = tmp_path / "elsewhere"
    write(elsewhere / "models.toml", '[[models]]\nid = "wrong/one"\n')
    monkeypatch.chdir(elsewhere)
    s = load_settings(etc / "cortex.toml", explicit=True, environ={})
    assert [m.id for m in s.catalogue.models] == ["Qwen/Qwen3-8B"]
    # The default value of models_config means the same file.
    write(etc / "cortex.toml", "")
    s = load_settings(etc / "cortex.toml", explicit=True, environ={})
    assert [m.id for m in s.catalogue.models] == ["Qwen/Qwen3-8B"]


def test_models_config_relative_subdir_and_absolute(tmp_path: Path) -> None:
    write(tmp_path / "conf" / "cat" / "m.toml", '[[models]]\nid = "a/sub"\n')
    write(tmp_path / "abs.toml", '[[models]]\nid = "a/abs"\n')
    write(tmp_path / "conf" / "cortex.toml", 'models_config = "cat/m.toml"\n')
    s = load_settings(tmp_path / "conf" / "cortex.toml", explicit=True, environ={})
    assert [m.id for m in s.catalogue.models] == ["a/sub"]
    write(tmp_path / "conf" / "cortex.toml", f'models_config = "{tmp_path / "abs.toml"}"\n')
    s = load_settings(tmp_path / "conf" / "cortex.toml", explicit=True, environ={})
    assert [m.id for m in s.catalogue.models] == ["a/abs"]


def test_unreadable_models_config_fails(tmp_path: Path) -> None:
    (tmp_path / "models.toml").mkdir()  # a directory: present but not readable as a file
    write(tmp_path / "cortex.toml", "")
    with pytest.raises(ConfigError, match=r"models\.toml"):
        load_settings(tmp_path / "cortex.toml", explicit=True, environ={})


# ---- defaults, env overrides -------------------------------------------------------------------


def test_defaults(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path / "cortex.toml", ""), explicit=True, environ={})
    c = s.config
    assert c.models_config == "models.toml"
    g = c.gateway
    assert (g.listen, g.metrics_listen) == ("0.0.0.0:31313", "127.0.0.1:31314")
    assert (g.poll_interval_secs, g.probe_timeout_secs, g.discovery_interval_secs) == (5, 5, 60)
    assert (g.request_timeout_secs, g.cold_load_timeout_secs, g.max_body_mb) == (300, 1800, 8)
    e = c.eviction
    assert (e.strategy, e.max_evictions_per_load, e.defrag_after_cycles) == ("lru", 3, 50)
    assert c.neurons == [] and c.entitlements.require_auth is False


def test_missing_default_config_runs_on_defaults(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        s = load_settings(tmp_path / "cortex.toml", explicit=False, environ={})
    assert s.config.gateway.listen == "0.0.0.0:31313"
    assert "cortex.toml" in caplog.text


def test_explicit_missing_config_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "nope.toml", explicit=True, environ={})


def test_env_overrides_file_and_defaults(tmp_path: Path) -> None:
    path = write(
        tmp_path / "cortex.toml",
        '[gateway]\nlisten = "127.0.0.1:1111"\npoll_interval_secs = 9\n'
        '[[neurons]]\nname = "from-file"\nendpoint = "http://file:13131"\n',
    )
    env = {
        "CORTEX_GATEWAY__LISTEN": "0.0.0.0:31313",  # not TOML: taken as a string
        "CORTEX_GATEWAY__MAX_BODY_MB": "4",
        "CORTEX_EVICTION__STRATEGY": "priority",
        "CORTEX_ENTITLEMENTS__REQUIRE_AUTH": "true",
        "CORTEX_NEURONS": '[{name="a",endpoint="http://a:13131"},'
        '{name="b",endpoint="http://b:13131",token="t"}]',
        "CORTEX_CONFIG": "/ignored/path.toml",
        "OTHER_GATEWAY__LISTEN": "1.2.3.4:5",
    }
    s = load_settings(path, explicit=True, environ=env)
    g = s.config.gateway
    assert g.listen == "0.0.0.0:31313"  # env beats the file
    assert g.poll_interval_secs == 9  # file beats the default
    assert g.max_body_mb == 4
    assert s.config.eviction.strategy == "priority"
    assert s.config.entitlements.require_auth is True
    assert [(n.name, n.endpoint, n.token) for n in s.config.neurons] == [
        ("a", "http://a:13131", None),
        ("b", "http://b:13131", "t"),
    ]


def test_env_values_parse_as_toml_when_they_can() -> None:
    assert parse_env_value("5") == 5
    assert parse_env_value("2.5") == 2.5
    assert parse_env_value("true") is True
    assert parse_env_value('["a", "b"]') == ["a", "b"]
    assert parse_env_value('{kind="rolling", seconds=60}') == {"kind": "rolling", "seconds": 60}
    assert parse_env_value("0.0.0.0:31313") == "0.0.0.0:31313"
    assert parse_env_value("http://a:13131") == "http://a:13131"


def test_invalid_env_value_names_the_key(tmp_path: Path) -> None:
    path = write(tmp_path / "cortex.toml", "")
    with pytest.raises(ConfigError) as e:
        load_settings(path, explicit=True, environ={"CORTEX_GATEWAY__POLL_INTERVAL_SECS": "soon"})
    assert "gateway.poll_interval_secs" in str(e.value)


# ---- invalid values and syntax errors ----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[gateway]\nlisten = "nope"\n', "gateway.listen"),
        ("[gateway]\npoll_interval_secs = 0\n", "gateway.poll_interval_secs"),
        ('[gateway]\nmax_body_mb = "big"\n', "gateway.max_body_mb"),
        ('[eviction]\nstrategy = "random"\n', "eviction.strategy"),
        ("[eviction]\nmax_evictions_per_load = -1\n", "eviction.max_evictions_per_load"),
        ('[[neurons]]\nname = "a b"\nendpoint = "http://a:1"\n', "neurons.0.name"),
        ('[[neurons]]\nname = "a"\nendpoint = "a:1"\n', "neurons.0.endpoint"),
        ('[[neurons]]\nendpoint = "http://a:1"\n', "neurons.0.name"),
        (
            '[[neurons]]\nname = "a"\nendpoint = "http://a:1"\ntoken = "x"\ntoken_env = "Y"\n',
            "neurons.0",
        ),
        ('[entitlements]\nrequire_auth = "maybe"\n', "entitlements.require_auth"),
        ('[[entitlements.keys]]\nkey = "k"\n', "entitlements.keys.0.account_id"),
        (
            '[[entitlements.keys]]\nkey = "k"\naccount_id = "a"\nwindow = {kind = "monthly"}\n',
            "entitlements.keys.0.window.kind",
        ),
    ],
)
def test_invalid_value_is_a_config_error_naming_file_and_key(
    tmp_path: Path, text: str, key: str
) -> None:
    path = write(tmp_path / "cortex.toml", text)
    with pytest.raises(ConfigError) as e:
        load_settings(path, explicit=True, environ={})
    msg = str(e.value)
    assert str(path) in msg
    assert f"key '{key}" in msg


def test_duplicate_neuron_names_are_an_error(tmp_path: Path) -> None:
    path = write(
        tmp_path / "cortex.toml",
        '[[neurons]]\nname = "a"\nendpoint = "http://a:1"\n'
        '[[neurons]]\nname = "a"\nendpoint = "http://b:1"\n',
    )
    with pytest.raises(ConfigError, match="duplicate neuron names: a"):
        load_settings(path, explicit=True, environ={})


def test_unset_token_env_names_the_key(tmp_path: Path) -> None:
    path = write(
        tmp_path / "cortex.toml",
        '[[neurons]]\nname = "a"\nendpoint = "http://a:1"\ntoken_env = "NODE_TOKEN_A"\n',
    )
    with pytest.raises(ConfigError, match="token_env") as e:
        load_settings(path, explicit=True, environ={})
    assert "NODE_TOKEN_A" in str(e.value)


def test_toml_syntax_error_names_the_file_line_and_key(tmp_path: Path) -> None:
    path = write(tmp_path / "cortex.toml", "[gateway]\nlisten = 0.0.0.0:31313\n")
    with pytest.raises(ConfigError) as e:
        load_settings(path, explicit=True, environ={})
    msg = str(e.value)
    assert str(path) in msg and "invalid TOML" in msg
    assert "line 2" in msg and "listen" in msg


def test_catalogue_syntax_error_fails_settings(tmp_path: Path) -> None:
    write(tmp_path / "models.toml", '[[models]\nid = "a/b"\n')
    path = write(tmp_path / "cortex.toml", "")
    with pytest.raises(ConfigError) as e:
        load_settings(path, explicit=True, environ={})
    assert "models.toml" in str(e.value) and "line 1" in str(e.value)


def test_unknown_keys_are_warned_not_fatal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write(tmp_path / "cortex.toml", "colour = 1\n[gateway]\nlisen = 1\n")
    with caplog.at_level(logging.WARNING):
        s = load_settings(path, explicit=True, environ={})
    assert s.config.gateway.listen == "0.0.0.0:31313"
    assert "colour" in caplog.text and "gateway.lisen" in caplog.text


# ---- the console script ------------------------------------------------------------------------


def run_cortex(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    assert CORTEX_BIN.exists(), f"console script missing: {CORTEX_BIN}"
    return subprocess.run(
        [str(CORTEX_BIN), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env={"PATH": "/usr/bin:/bin", "HOME": str(cwd or "/tmp")},
    )


def test_serve_with_a_missing_explicit_config_exits_2(tmp_path: Path) -> None:
    p = run_cortex("serve", "--config", "/nonexistent", cwd=tmp_path)
    assert p.returncode == 2
    assert "/nonexistent" in p.stderr and "not found" in p.stderr
    assert "Traceback" not in p.stderr


def test_serve_with_an_invalid_value_exits_2_naming_file_and_key(tmp_path: Path) -> None:
    path = write(tmp_path / "cortex.toml", '[gateway]\nlisten = "nope"\n')
    p = run_cortex("serve", "--config", str(path), cwd=tmp_path)
    assert p.returncode == 2
    assert str(path) in p.stderr and "gateway.listen" in p.stderr
    assert "Traceback" not in p.stderr


def test_serve_with_a_syntax_error_exits_2(tmp_path: Path) -> None:
    path = write(tmp_path / "cortex.toml", "[gateway\n")
    p = run_cortex("serve", "--config", str(path), cwd=tmp_path)
    assert p.returncode == 2
    assert str(path) in p.stderr and "invalid TOML" in p.stderr
    assert "Traceback" not in p.stderr


def test_serve_with_a_non_utf8_file_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "cortex.toml"
    path.write_bytes(b'x = "\xff"\n')
    p = run_cortex("serve", "--config", str(path), cwd=tmp_path)
    assert p.returncode == 2
    assert str(path) in p.stderr and "Traceback" not in p.stderr
