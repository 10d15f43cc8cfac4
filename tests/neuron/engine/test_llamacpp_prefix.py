"""The llamacpp harness without llama.cpp: the prefix cache's choices and the GGUF load spec."""

from __future__ import annotations

from pathlib import Path

import pytest

from helexa.neuron.engine.errors import LoadError
from helexa.neuron.engine.llamacpp_prefix import PrefixCache, common_prefix
from helexa.neuron.engine.loader import LoadSpec


def test_common_prefix() -> None:
    assert common_prefix([1, 2, 3], [1, 2, 4]) == 2
    assert common_prefix([1, 2], [1, 2, 3]) == 2
    assert common_prefix([], [1]) == 0


def test_takes_the_longest_prefix_and_keeps_one_token_to_feed() -> None:
    pc = PrefixCache(3)
    a, keep = pc.take([1, 2, 3, 4]) or (None, -1)
    assert a is not None and keep == 0
    a.tokens = [1, 2, 3, 4, 9]
    pc.give_back(a)
    b, keep = pc.take([1, 2, 3, 7]) or (None, -1)
    assert b is a and keep == 3
    b.tokens = [1, 2, 3, 7]
    pc.give_back(b)
    # the same prompt again: everything is cached but the last token is fed for its logits
    c, keep = pc.take([1, 2, 3, 7]) or (None, -1)
    assert c is a and keep == 3


def test_busy_slots_are_not_shared_and_lru_goes_first() -> None:
    pc = PrefixCache(2)
    x, _ = pc.take([5]) or (None, 0)
    y, _ = pc.take([5]) or (None, 0)
    assert x is not None and y is not None and x is not y
    assert pc.take([5]) is None  # both in use
    x.tokens, y.tokens = [5, 6], [5, 7]
    pc.give_back(y)
    pc.give_back(x)
    assert pc.victims() == [y, x]  # y idle longest
    z, keep = pc.take([9]) or (None, -1)
    assert z is y and keep == 0  # no prefix anywhere: the least recently used slot


def test_llamacpp_spec_needs_a_gguf_not_a_config(tmp_path: Path) -> None:
    f = tmp_path / "m-Q8_0.gguf"
    f.write_bytes(b"x")
    spec = LoadSpec.from_frame({"path": str(f), "harness": "llamacpp", "quant": "Q8_0"})
    assert spec.gguf_files == [str(f)] and spec.quant == "Q8_0"
    with pytest.raises(LoadError) as e:
        LoadSpec.from_frame({"path": str(tmp_path / "none.gguf"), "harness": "llamacpp"})
    assert (e.value.status, e.value.code) == (404, "model_source_not_found")
    with pytest.raises(LoadError) as e:
        LoadSpec.from_frame({"path": str(f), "harness": "llamacpp", "kv_cache_type": "q2"})
    assert (e.value.status, e.value.code) == (400, "invalid_value")
    shards = tmp_path / "s-00001-of-00002.gguf"
    shards.write_bytes(b"x")
    with pytest.raises(LoadError) as e:  # the second shard is missing
        LoadSpec.from_frame({"path": str(shards), "harness": "llamacpp"})
    assert e.value.status == 404
    (tmp_path / "s-00002-of-00002.gguf").write_bytes(b"x")
    spec = LoadSpec.from_frame({"path": str(shards), "harness": "llamacpp"})
    assert spec.gguf_files == [str(shards), str(tmp_path / "s-00002-of-00002.gguf")]
    with pytest.raises(LoadError) as e:  # a directory of two models and no quant to pick
        LoadSpec.from_frame({"path": str(tmp_path), "harness": "llamacpp"})
    assert (e.value.status, e.value.code) == (400, "ambiguous_gguf")
    spec = LoadSpec.from_frame({"path": str(tmp_path), "harness": "llamacpp", "quant": "q8_0"})
    assert spec.gguf_files == [str(f)]
