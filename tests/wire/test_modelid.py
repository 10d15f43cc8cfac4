"""Load-id grammar and served ids (wire.modelid), and the default quant (wire.harness)."""

from __future__ import annotations

import pytest

from helexa.wire.errors import ApiError
from helexa.wire.harness import default_quant
from helexa.wire.modelid import ModelId, parse_model_id

SOURCES = {"helexa": "https://registry.helexa.ai"}


def test_qualified() -> None:
    mid = parse_model_id("huggingface:Qwen/Qwen3.6-27B")
    assert (mid.scheme, mid.org, mid.name, mid.path) == ("huggingface", "Qwen", "Qwen3.6-27B", None)
    assert mid.repo == "Qwen/Qwen3.6-27B"


def test_helexa_scheme() -> None:
    mid = parse_model_id("helexa:SomeOperator/Qwen3.6-27B-Uncensored", SOURCES)
    assert (mid.scheme, mid.org, mid.name) == ("helexa", "SomeOperator", "Qwen3.6-27B-Uncensored")


def test_bare_has_no_scheme_until_defaulted() -> None:
    mid = parse_model_id("Qwen/Qwen3-30B-A3B-Instruct")
    assert mid.scheme is None
    assert mid.with_default_scheme("huggingface").scheme == "huggingface"


def test_default_never_overrides_explicit_scheme() -> None:
    mid = parse_model_id("helexa:Qwen/Q3")
    assert mid.with_default_scheme("huggingface").scheme == "helexa"


@pytest.mark.parametrize("s", ["helexa:Helexa/Qwen3.6-27B", "Qwen/Q3", "/srv/models/Qwen3-0.6B"])
def test_prints_back(s: str) -> None:
    assert parse_model_id(s).qualified() == s
    assert str(parse_model_id(s)) == s


def test_resolved_prints_qualified() -> None:
    assert parse_model_id("Qwen/Q3").with_default_scheme("huggingface").qualified() == (
        "huggingface:Qwen/Q3"
    )


@pytest.mark.parametrize(
    "s",
    [
        "org/name/extra",
        "huggingface:org/name/extra",
        "../etc",
        "org/..",
        "./name",
        "org/.",
        "org/a..b",
        "huggingface:../../x",
        "org/na me",
        "org/-name",
        "org\\x/name",
        "o" * 97 + "/name",
    ],
)
def test_repo_ids_are_exactly_two_plain_segments(s: str) -> None:
    """A second '/' or a '.'/'..' segment is a 400 at parse time (cortex and neuron alike),
    never a hub call that fails later as a permanent `failed` record."""
    with pytest.raises(ApiError) as ei:
        parse_model_id(s)
    assert (ei.value.status, ei.value.code) == (400, "invalid_model_id")


@pytest.mark.parametrize(
    "s", ["Qwen/Qwen3.6-27B", "sentence-transformers/all-MiniLM-L6-v2", "a_b/c.d"]
)
def test_plain_repo_ids_parse(s: str) -> None:
    assert parse_model_id(s).repo == s


@pytest.mark.parametrize(
    ("s", "message"),
    [
        ("", "empty model id"),
        ("Qwen", "model id 'Qwen' is missing the '/' between org and name"),
        ("huggingface:Qwen", "model id 'huggingface:Qwen' is missing the '/' between org and name"),
        (":Qwen/Q3", "model id ':Qwen/Q3' has an empty scheme before ':'"),
        ("huggingface:/N", "model id 'huggingface:/N' has an empty org"),
        ("/N", None),  # a path, not an error
        ("huggingface:Q/", "model id 'huggingface:Q/' has an empty name"),
        (
            "hugg/ingface:Q/N",
            "model id 'hugg/ingface:Q/N' has a scheme containing '/' which is reserved for "
            "org/name",
        ),
        (
            "Qwen/Q3:weird",
            "model id 'Qwen/Q3:weird' has a scheme containing '/' which is reserved for org/name",
        ),
        (
            "huggingface:Q/N:weird",
            "model id 'huggingface:Q/N:weird' has a name containing ':' which is reserved for "
            "the scheme prefix",
        ),
    ],
)
def test_parse_errors(s: str, message: str | None) -> None:
    if message is None:
        assert parse_model_id(s).is_path
        return
    with pytest.raises(ApiError) as ei:
        parse_model_id(s)
    e = ei.value
    assert (e.status, e.code, e.type, e.message, e.param) == (
        400,
        "invalid_model_id",
        "invalid_request_error",
        message,
        None,
    )


def test_unknown_source_lists_known_schemes() -> None:
    with pytest.raises(ApiError) as ei:
        parse_model_id("acme:Qwen/Q3", SOURCES)
    assert (ei.value.status, ei.value.code) == (400, "unknown_source")
    assert ei.value.message == (
        "model source scheme 'acme' is not configured (known: helexa, huggingface)"
    )


def test_unknown_default_source_applies_to_bare_ids_only() -> None:
    with pytest.raises(ApiError) as ei:
        parse_model_id("Qwen/Q3", SOURCES, default_source="mirror")
    assert ei.value.code == "unknown_source"
    assert parse_model_id("helexa:Qwen/Q3", SOURCES, default_source="mirror").scheme == "helexa"


def test_huggingface_is_built_in() -> None:
    assert parse_model_id("huggingface:Qwen/Q3", {}).scheme == "huggingface"
    assert parse_model_id("Qwen/Q3", {}).scheme is None


def test_path_skips_grammar_and_sources() -> None:
    mid = parse_model_id("/srv/models:odd/x", {})
    assert mid == ModelId(scheme=None, org="", name="", path="/srv/models:odd/x")


@pytest.mark.parametrize(
    ("load_id", "served", "want"),
    [
        ("helexa:Helexa/Qwen3.6-27B", None, "Helexa/Qwen3.6-27B"),
        ("Qwen/Qwen3-8B", None, "Qwen/Qwen3-8B"),
        ("Qwen/Qwen3-8B", "team/fast", "team/fast"),
        ("/srv/models/Qwen3-0.6B", None, "local/Qwen3-0.6B"),
        ("/srv/models/Qwen3-0.6B/", None, "local/Qwen3-0.6B"),
        ("/srv/models/q.Q4_K_M.gguf", None, "local/q.Q4_K_M"),
        ("/srv/models/q.Q4_K_M.gguf", "x/y", "x/y"),
    ],
)
def test_served_id(load_id: str, served: str | None, want: str) -> None:
    assert parse_model_id(load_id).served_id(served) == want


def test_default_quant() -> None:
    assert default_quant("cuda", "8.9") == "bf16"
    assert default_quant("cuda", "7.5") == "fp16"
    assert default_quant("cuda", None) == "fp16"
    assert default_quant("cpu", None) == "fp32"
