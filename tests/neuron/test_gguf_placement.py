"""GGUF placement decisions on fake device lists: one device, a proportional split over
mismatched cards, CPU offload, and the 507 when nothing allows it to fit."""

from __future__ import annotations

from pathlib import Path

import pytest

from helexa.neuron.gguf_placement import (
    GgufSize,
    context_for,
    gguf_size,
    place,
    size_from_meta,
)
from helexa.wire.errors import ApiError

GB = 1024  # MB
# Qwen3-14B at Q4_K_M: ~9 GB of weights, 40 layers, 8 KV heads of 128.
QWEN3_14B = size_from_meta(
    {
        "general.architecture": "qwen3",
        "qwen3.block_count": 40,
        "qwen3.attention.head_count": 40,
        "qwen3.attention.head_count_kv": 8,
        "qwen3.embedding_length": 5120,
        "qwen3.attention.key_length": 128,
        "qwen3.attention.value_length": 128,
        "qwen3.context_length": 40960,
    },
    9 * 2**30,
)


def test_kv_cache_and_estimate() -> None:
    assert QWEN3_14B.kv_bytes_per_token == 40 * 8 * 256 * 2  # 160 KiB per token
    assert QWEN3_14B.kv_bytes(8192) == 1280 * 2**20
    assert QWEN3_14B.kv_bytes(8192, "q8_0") == 680 * 2**20
    assert QWEN3_14B.kv_bytes(8192, "q4_0") == 360 * 2**20
    # (9 GiB + 1.25 GiB) * 1.1 + the compute buffer
    assert QWEN3_14B.required_mb(8192) == 11546 + 256


def test_one_device_takes_every_layer() -> None:
    p = place("m", QWEN3_14B, [(0, "cuda", 24 * GB)], n_ctx=8192)
    assert (p.n_gpu_layers, p.tensor_split, p.cpu_layers) == (-1, None, 0)
    assert p.describe() == "40 of 40 layers on the GPU(s)"


def test_12_and_8_gb_split_in_proportion_to_free_memory() -> None:
    p = place("m", QWEN3_14B, [(0, "cuda", 12 * GB), (1, "cuda", 8 * GB)], n_ctx=8192)
    assert p.n_gpu_layers == -1 and p.cpu_layers == 0
    assert p.tensor_split == [0.6, 0.4]
    # each card's share of the model is within its free memory
    assert all(
        share * p.required_mb <= free
        for share, free in zip(p.tensor_split, (12 * GB, 8 * GB), strict=True)
    )


def test_24_and_24_gb_split_evenly() -> None:
    p = place("m", QWEN3_14B, [(0, "cuda", 24 * GB), (1, "cuda", 24 * GB)], n_ctx=32768)
    assert (p.n_gpu_layers, p.tensor_split) == (-1, [0.5, 0.5])


def test_not_enough_memory_is_507_with_the_estimate() -> None:
    with pytest.raises(ApiError) as e:
        place("m", QWEN3_14B, [(0, "cuda", 6 * GB), (1, "cuda", 4 * GB)], n_ctx=8192)
    assert (e.value.status, e.value.code) == (507, "insufficient_memory")
    assert e.value.extras == {"required_mb": 11802, "free_mb": 10 * GB}
    assert "0,1" in e.value.message


def test_cpu_offload_puts_the_rest_on_the_cpu() -> None:
    p = place(
        "m", QWEN3_14B, [(0, "cuda", 6 * GB), (1, "cuda", 4 * GB)], n_ctx=8192, cpu_offload=True
    )
    per_layer = 11802 / 40
    assert p.n_gpu_layers == int(6 * GB / per_layer) + int(4 * GB / per_layer) == 33
    assert p.cpu_layers == 7
    assert p.tensor_split == [round(20 / 33, 4), round(13 / 33, 4)]
    assert p.describe() == "33 of 40 layers on the GPU(s) split 0.61/0.39, 7 on the CPU"


def test_cpu_offload_needs_the_host_ram_for_the_offloaded_layers() -> None:
    gpus = [(0, "cuda", 6 * GB), (1, "cuda", 4 * GB)]
    need = -(-7 * 11802 // 40)  # the 7 offloaded layers' share of the estimate, rounded up
    p = place("m", QWEN3_14B, gpus, n_ctx=8192, cpu_offload=True, host_free_mb=need)
    assert p.cpu_layers == 7
    with pytest.raises(ApiError) as e:
        place("m", QWEN3_14B, gpus, n_ctx=8192, cpu_offload=True, host_free_mb=need - 1)
    assert (e.value.status, e.value.code) == (507, "insufficient_memory")
    assert e.value.extras == {"required_mb": 11802, "free_mb": 10 * GB + need - 1}
    assert f"7 layers offloaded to the CPU need about {need} MB" in e.value.message
    # nothing fits the GPU: the whole estimate must fit the host
    with pytest.raises(ApiError):
        place("m", QWEN3_14B, [(0, "cuda", 100)], n_ctx=8192, cpu_offload=True, host_free_mb=8 * GB)


def test_cpu_offload_with_no_room_at_all_runs_on_the_cpu() -> None:
    p = place("m", QWEN3_14B, [(0, "cuda", 100)], n_ctx=8192, cpu_offload=True)
    assert (p.n_gpu_layers, p.tensor_split, p.cpu_layers) == (0, None, 40)


def test_cpu_host_checks_ram() -> None:
    assert place("m", QWEN3_14B, [(0, "cpu", 64 * GB)], n_ctx=8192).n_gpu_layers == 0
    with pytest.raises(ApiError) as e:
        place("m", QWEN3_14B, [(0, "cpu", 8 * GB)], n_ctx=8192)
    assert e.value.status == 507


def test_unknown_free_memory_is_trusted() -> None:
    p = place("m", QWEN3_14B, [(0, "cuda", None), (1, "cuda", 8 * GB)], n_ctx=8192)
    assert p.n_gpu_layers == -1


def test_context_from_catalogue_else_trained_capped_by_room() -> None:
    assert context_for(QWEN3_14B, 16384, 12 * GB, "f16") == 16384
    assert context_for(QWEN3_14B, None, None, "f16") == 40960
    assert context_for(QWEN3_14B, None, 80 * GB, "f16") == 40960
    ctx = context_for(QWEN3_14B, None, 12 * GB, "f16")
    assert 512 <= ctx < 40960 and QWEN3_14B.required_mb(ctx) <= 12 * GB
    assert context_for(QWEN3_14B, None, 12 * GB, "q4_0") > ctx
    assert context_for(QWEN3_14B, None, 1 * GB, "f16") == 512


def test_size_of_a_real_gguf_and_its_shards(
    tiny_gguf: dict[str, Path], tiny_gguf_split: Path
) -> None:
    size = gguf_size(tiny_gguf["qwen3-F32"])
    assert size == GgufSize(
        weights_bytes=tiny_gguf["qwen3-F32"].stat().st_size,
        n_layers=2,
        n_ctx_train=1024,
        kv_bytes_per_token=2 * 2 * 32 * 2,
    )
    shards = sorted(tiny_gguf_split.parent.glob("*.gguf"))
    assert gguf_size(tiny_gguf_split).weights_bytes == sum(s.stat().st_size for s in shards)


# Qwen3.5-27B: 64 layers, one in four full attention (4 KV heads of 256); Gated DeltaNet in the
# rest (48 value heads of 128, 16 key heads of 128, conv kernel 4).
QWEN35_27B = size_from_meta(
    {
        "general.architecture": "qwen35",
        "qwen35.block_count": 64,
        "qwen35.full_attention_interval": 4,
        "qwen35.attention.head_count": 24,
        "qwen35.attention.head_count_kv": 4,
        "qwen35.embedding_length": 5120,
        "qwen35.attention.key_length": 256,
        "qwen35.attention.value_length": 256,
        "qwen35.context_length": 262144,
        "qwen35.ssm.inner_size": 48 * 128,
        "qwen35.ssm.state_size": 128,
        "qwen35.ssm.group_count": 16,
        "qwen35.ssm.time_step_rank": 48,
        "qwen35.ssm.conv_kernel": 4,
    },
    16 * 2**30,
)


def test_hybrid_counts_attention_layers_and_the_recurrent_state() -> None:
    assert QWEN35_27B.kv_bytes_per_token == 16 * 4 * 512 * 2  # 64 KiB: 16 attention layers
    # per sequence: 48 layers x f32 (128 x 6144 delta-rule state + 3 x 10240 conv window)
    assert QWEN35_27B.state_bytes_per_seq == 48 * 4 * (128 * 6144 + 3 * 10240)  # ~150 MB
    assert (QWEN35_27B.n_seq, QWEN3_14B.n_seq) == (8, 32)
    # weights + KV for 32k tokens (2 GiB) + 8 sequences' state, +10 %, + the compute buffer
    held = 16 * 2**30 + 2 * 2**30 + 8 * QWEN35_27B.state_bytes_per_seq
    assert QWEN35_27B.kv_bytes(32768) == 2 * 2**30
    assert QWEN35_27B.required_mb(32768) == -(-held * 11 // 10 // 2**20) + 256


def test_size_of_a_hybrid_gguf(tiny_gguf_hybrid: dict[str, tuple[Path, Path]]) -> None:
    size = gguf_size(tiny_gguf_hybrid["qwen3_5"][0])
    assert (size.n_layers, size.n_seq) == (2, 8)
    assert size.kv_bytes_per_token == 1 * 2 * 32 * 2  # the one full-attention layer
    assert size.state_bytes_per_seq == 4 * (16 * 64 + 3 * (2 * 2 * 16 + 64))
