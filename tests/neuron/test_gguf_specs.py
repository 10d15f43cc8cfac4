"""GGUF load specs: llamacpp quant names, what a `.gguf` id resolves to, and cortex catalogue
entries with `harness = "llamacpp"` (validated by the same ModelSpec the neuron checks)."""

from __future__ import annotations

import pytest

from helexa.config.catalogue import ModelProfile
from helexa.neuron.sources import check_quant, resolve_spec
from helexa.wire.errors import ApiError
from helexa.wire.neuron import ModelSpec

HARNESSES = ("torch", "llamacpp")


@pytest.mark.parametrize(
    ("asked", "want"),
    [
        ("Q4_K_M", "Q4_K_M"),
        ("q4_k_m", "Q4_K_M"),
        ("Q5-K-M", "Q5_K_M"),
        ("q6_k", "Q6_K"),
        ("Q8_0", "Q8_0"),
        ("f16", "F16"),
        ("fp16", "F16"),
        ("bf16", "BF16"),
        ("F32", "F32"),
        ("IQ2_XS", "IQ2_XS"),
        (None, None),
    ],
)
def test_llamacpp_quants(asked: str | None, want: str | None) -> None:
    assert check_quant(asked, "llamacpp") == want


@pytest.mark.parametrize("asked", ["int8", "awq", "q4k", "gptq-4bit"])
def test_llamacpp_refuses_non_gguf_quants(asked: str) -> None:
    with pytest.raises(ApiError) as e:
        check_quant(asked, "llamacpp")
    assert (e.value.status, e.value.code) == (400, "unsupported_quant")
    assert "Q4_K_M" in e.value.message


def test_a_gguf_path_is_llamacpp_served_as_local_stem() -> None:
    r = resolve_spec(ModelSpec(model_id="/m/Qwen3-8B-Q4_K_M.gguf"), sources={}, harnesses=HARNESSES)
    assert (r.harness, r.served_id, r.quant) == ("llamacpp", "local/Qwen3-8B-Q4_K_M", None)


def test_llamacpp_may_span_devices() -> None:
    spec = ModelSpec(
        model_id="Qwen/Qwen3-32B-GGUF", harness="llamacpp", quant="q4_k_m", tensor_parallel=2
    )
    r = resolve_spec(spec, sources={}, harnesses=HARNESSES, device_count=2)
    assert (r.harness, r.quant, r.served_id) == ("llamacpp", "Q4_K_M", "Qwen/Qwen3-32B-GGUF")
    with pytest.raises(ApiError) as e:
        resolve_spec(spec.model_copy(update={"harness": "torch", "quant": None}), sources={})
    assert e.value.code == "unsupported_parameter"


def test_catalogue_llamacpp_entry_carries_context_kv_and_offload() -> None:
    m = ModelProfile.model_validate(
        {
            "id": "Qwen/Qwen3-32B-GGUF",
            "harness": "llamacpp",
            "quant": "Q4_K_M",
            "min_devices": 2,
            "limit": {"context": 32768, "output": 8192},
            "kv_cache_type": "q8_0",
            "cpu_offload": True,
        }
    )
    spec = m.load_spec([0, 1])
    assert (spec.harness, spec.quant, spec.tensor_parallel) == ("llamacpp", "Q4_K_M", 2)
    assert (spec.context, spec.kv_cache_type, spec.cpu_offload) == (32768, "q8_0", True)
    torch = ModelProfile.model_validate({"id": "a/b", "limit": {"context": 4096}}).load_spec([0])
    assert (torch.context, torch.kv_cache_type, torch.cpu_offload) == (None, None, None)


@pytest.mark.parametrize(
    "entry",
    [
        {"harness": "llamacpp", "quant": "int8"},
        {"harness": "llamacpp", "kv_cache_type": "q5_1"},
        {"harness": "torch", "quant": "Q4_K_M"},
    ],
)
def test_catalogue_refuses_what_the_neuron_would(entry: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        ModelProfile.model_validate({"id": "a/b", **entry})


def test_model_spec_checks_the_new_keys() -> None:
    with pytest.raises(ValueError):
        ModelSpec(model_id="a/b", context=0)
    with pytest.raises(ValueError):
        ModelSpec.model_validate({"model_id": "a/b", "kv_cache_type": "f32"})
