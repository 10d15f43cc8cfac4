"""helexa-acp's config: the file, the environment fallback, and each validation message (§4)."""

from __future__ import annotations

from pathlib import Path

import pytest

from helexa.acp.config import ConfigError, config_path, from_environment, load_config


def write(tmp_path: Path, text: str) -> dict[str, str]:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return {"HELEXA_ACP_CONFIG_PATH": str(path)}


def test_no_file_builds_the_default_endpoint_from_the_environment(tmp_path: Path) -> None:
    cfg = load_config({"XDG_CONFIG_HOME": str(tmp_path)})
    (ep,) = cfg.endpoints
    assert (ep.name, ep.base_url, ep.default_model) == (
        "default",
        "http://localhost:31313/v1",
        "helexa/large",
    )
    assert (ep.wire_api, ep.api_key, ep.max_tokens, ep.context_window) == (
        "openai-chat",
        None,
        None,
        None,
    )
    assert cfg.default_endpoint == "default" and cfg.system_prompt_path is None


def test_environment_variables_fill_the_default_endpoint() -> None:
    cfg = from_environment(
        {
            "HELEXA_ACP_BASE_URL": "http://gw:8080/v1/",
            "HELEXA_ACP_MODEL": "qwen/coder",
            "HELEXA_ACP_API_KEY": "sk-1",
            "HELEXA_ACP_SYSTEM_PROMPT_PATH": "/etc/prompt.md",
            "HELEXA_ACP_MAX_TOKENS": "2048",
            "HELEXA_ACP_CONTEXT_WINDOW": "32768",
        }
    )
    ep = cfg.endpoints[0]
    assert (ep.base_url, ep.default_model, ep.api_key) == (
        "http://gw:8080/v1",
        "qwen/coder",
        "sk-1",
    )
    assert (ep.max_tokens, ep.context_window) == (2048, 32768)
    assert cfg.system_prompt_path == Path("/etc/prompt.md")


@pytest.mark.parametrize("var", ["HELEXA_ACP_MAX_TOKENS", "HELEXA_ACP_CONTEXT_WINDOW"])
def test_a_non_numeric_limit_in_the_environment_is_named(var: str) -> None:
    with pytest.raises(ConfigError, match=f"^{var} must be a positive integer, got 'lots'$"):
        from_environment({var: "lots"})


def test_the_file_path_is_the_env_override_else_xdg() -> None:
    assert config_path({"HELEXA_ACP_CONFIG_PATH": "/x/c.toml"}) == Path("/x/c.toml")
    assert config_path({"XDG_CONFIG_HOME": "/cfg"}) == Path("/cfg/helexa-acp/config.toml")


def test_a_full_file(tmp_path: Path) -> None:
    env = write(
        tmp_path,
        """
default_endpoint = "claude"
system_prompt_path = "/p.md"
[[endpoints]]
name = "cortex"
base_url = "http://localhost:31313/v1"
default_model = "helexa/large"
context_window = 32768
[[endpoints]]
name = "claude"
base_url = "https://api.anthropic.com/v1"
wire_api = "anthropic-messages"
api_key_env = "MY_KEY"
max_tokens = 4096
""",
    )
    cfg = load_config(env | {"MY_KEY": "sk-ant"})
    assert [e.name for e in cfg.endpoints] == ["cortex", "claude"]
    assert cfg.default_endpoint == "claude"
    claude = cfg.endpoints[1]
    assert (claude.wire_api, claude.api_key, claude.max_tokens) == (
        "anthropic-messages",
        "sk-ant",
        4096,
    )
    assert cfg.endpoints[0].context_window == 32768


def test_default_endpoint_defaults_to_the_first(tmp_path: Path) -> None:
    env = write(tmp_path, '[[endpoints]]\nname = "a"\nbase_url = "http://h/v1"\n')
    assert load_config(env).default_endpoint == "a"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('default_endpoint = "a"\n', "config has no [[endpoints]] entries"),
        ("endpoints = []\n", "config has no [[endpoints]] entries"),
        (
            '[[endpoints]]\nname = "a:b"\nbase_url = "http://h/v1"\n',
            "endpoint name 'a:b' contains ':' which would clash with the endpoint:model "
            "selector syntax",
        ),
        (
            'default_endpoint = "nope"\n[[endpoints]]\nname = "a"\nbase_url = "http://h/v1"\n',
            "default_endpoint 'nope' is not declared in [[endpoints]]",
        ),
        (
            '[[endpoints]]\nname = "a"\nbase_url = "http://h/v1"\nwire_api = "grpc"\n',
            "endpoint 'a': wire_api must be one of openai-chat, openai-responses, "
            "anthropic-messages",
        ),
        (
            '[[endpoints]]\nname = "a"\n',
            "endpoint 'a': base_url is required, an http(s) URL including /v1",
        ),
        (
            '[[endpoints]]\nname = "a"\nbase_url = "http://h/v1"\nmax_tokens = 0\n',
            "endpoint 'a': max_tokens must be a positive integer",
        ),
        (
            '[[endpoints]]\nname = "a"\nbase_url = "http://h/v1"\n'
            '[[endpoints]]\nname = "a"\nbase_url = "http://i/v1"\n',
            "endpoint name 'a' is declared more than once",
        ),
        ("endpoints = [\n", "config file .*config.toml: "),
    ],
)
def test_validation_messages(tmp_path: Path, text: str, message: str) -> None:
    env = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_config(env)
    if message.endswith(": "):
        assert str(e.value).startswith(message.split(".*")[0]) and "config.toml" in str(e.value)
    else:
        assert str(e.value) == message


def test_an_explicit_path_that_is_missing_is_an_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match="does not exist"):
        load_config({"HELEXA_ACP_CONFIG_PATH": str(missing)})


def test_model_selector_splits_at_the_first_colon(tmp_path: Path) -> None:
    env = write(
        tmp_path,
        'default_endpoint = "b"\n'
        '[[endpoints]]\nname = "a"\nbase_url = "http://a/v1"\n'
        '[[endpoints]]\nname = "b"\nbase_url = "http://b/v1"\n',
    )
    cfg = load_config(env)

    def sel(s: str) -> tuple[str, str]:
        ep, model = cfg.select(s)
        return ep.name, model

    assert sel("a:org/m:tag") == ("a", "org/m:tag")
    assert sel("org/m") == ("b", "org/m")  # no colon: the default endpoint
    assert sel(":org/m:tag") == ("b", "org/m:tag")  # leading colon: the default endpoint
    assert sel("qwen3:8b") == ("b", "qwen3:8b")  # not an endpoint name: a model id with a tag
    with pytest.raises(ConfigError, match="names no model"):
        cfg.select("a:")


def test_an_unset_api_key_env_is_a_warning_not_an_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    env = write(
        tmp_path, '[[endpoints]]\nname = "a"\nbase_url = "http://h/v1"\napi_key_env = "UNSET_X"\n'
    )
    assert load_config(env).endpoints[0].api_key is None
    assert "endpoint 'a': api_key_env names UNSET_X, which is not set" in caplog.text
