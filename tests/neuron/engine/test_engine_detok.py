"""Incremental detokenisation: UTF-8 never split, stop strings cut out, markers kept whole."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer
from workerctl import markers_whole

from helexa.neuron.engine.detok import REPLACEMENT, Detokenizer, IncrementalDecoder, TextGate

MARKERS = ["<think>", "</think>", "<tool_call>", "</tool_call>"]


@pytest.fixture(scope="module")
def tok(tiny_qwen3: Path) -> Tokenizer:
    return Tokenizer.from_file(str(tiny_qwen3 / "tokenizer.json"))


@pytest.fixture(scope="module")
def split_tok(tiny_qwen3_split_markers: Path) -> Tokenizer:
    return Tokenizer.from_file(str(tiny_qwen3_split_markers / "tokenizer.json"))


def run_decoder(tok: Tokenizer, ids: list[int]) -> list[str]:
    dec = IncrementalDecoder(tok)
    pieces = [dec.push(i) for i in ids]
    pieces.append(dec.flush())
    return pieces


def test_multibyte_characters_are_never_split(tok: Tokenizer) -> None:
    text = "Ünïcödé: café, naïve, 日本語, emoji 🙂 and ✓ marks. 🙂🙂"
    ids = tok.encode(text, add_special_tokens=False).ids
    # The byte-level vocabulary really does split some characters across tokens.
    assert any(REPLACEMENT in tok.decode([i]) for i in ids)
    pieces = run_decoder(tok, ids)
    assert "".join(pieces) == text
    assert not any(REPLACEMENT in p for p in pieces)


def test_emoji_waits_for_its_last_byte(tok: Tokenizer) -> None:
    ids = tok.encode("🙂", add_special_tokens=False).ids
    assert len(ids) > 1
    dec = IncrementalDecoder(tok)
    assert [dec.push(i) for i in ids[:-1]] == [""] * (len(ids) - 1)
    assert dec.push(ids[-1]) == "🙂"


def test_dangling_bytes_come_out_at_the_end(tok: Tokenizer) -> None:
    ids = tok.encode("a🙂", add_special_tokens=False).ids[:-1]
    pieces = run_decoder(tok, ids)
    assert "".join(pieces) == tok.decode(ids)
    assert pieces[-1].endswith(REPLACEMENT)


def test_random_token_streams_decode_like_the_whole(tok: Tokenizer) -> None:
    import random

    rng = random.Random(7)
    for _ in range(50):
        ids = [rng.randrange(3, tok.get_vocab_size()) for _ in range(40)]
        assert "".join(run_decoder(tok, ids)) == tok.decode(ids)


def test_special_tokens_are_skipped(tok: Tokenizer) -> None:
    eos = tok.token_to_id("<|im_end|>")
    ids = [*tok.encode("hi", add_special_tokens=False).ids, eos]
    assert "".join(run_decoder(tok, ids)) == "hi"


def gate_run(chunks: list[str], stop: list[str], hold: list[str]) -> tuple[list[str], TextGate]:
    g = TextGate(stop, hold)
    out = [g.push(c) for c in chunks]
    out.append(g.flush())
    return out, g


def test_stop_string_across_chunks_is_cut_out() -> None:
    out, g = gate_run(["Hello wo", "rld, ", "and more"], ["world"], [])
    assert "".join(out) == "Hello "
    assert g.stop_reason == "world"
    assert out[0] == "Hello "  # "wo" held: it might start the stop string


def test_earliest_stop_wins() -> None:
    out, g = gate_run(["abc STOP2 x STOP1"], ["STOP1", "STOP2"], [])
    assert "".join(out) == "abc "
    assert g.stop_reason == "STOP2"


def test_false_start_is_released() -> None:
    out, g = gate_run(["ab\n", "c\n", "\nd"], ["\n\n"], [])
    assert out[:2] == ["ab", "\nc"]
    assert "".join(out) == "ab\nc"
    assert g.stop_reason == "\n\n"


def test_held_prefix_flushes_at_end() -> None:
    out, g = gate_run(["text <thi"], [], ["<think>"])
    assert out == ["text ", "<thi"]
    assert g.stop_reason is None


def test_marker_is_not_split_by_a_stop_prefix() -> None:
    # "k>" could start the stop string "k>!", but cutting there would split "<think>".
    out, _ = gate_run(["a<think>", "b"], ["k>!"], ["<think>"])
    assert out[0] == "a"
    assert "".join(out) == "a<think>b"
    assert any("<think>" in p for p in out)


_ALPHABET = st.sampled_from(["<", "/", "t", "h", "i", "n", "k", ">", "a", " ", "\n", "é", *MARKERS])


@settings(max_examples=300, deadline=None)
@given(
    parts=st.lists(_ALPHABET, max_size=30),
    cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=12),
    stop=st.lists(st.sampled_from(["k>", "\n\n", "hi", "</t", "zz"]), max_size=2),
)
def test_gate_properties(parts: list[str], cuts: list[int], stop: list[str]) -> None:
    text = "".join(parts)
    bounds = sorted({c % (len(text) + 1) for c in cuts} | {0, len(text)})
    chunks = [text[a:b] for a, b in itertools.pairwise(bounds)]
    out, g = gate_run(chunks, stop, MARKERS)
    hits = [(text.find(s), s) for s in stop if s and text.find(s) >= 0]
    expected = text[: min(hits)[0]] if hits else text
    assert "".join(out) == expected
    if hits:
        assert g.stop_reason is not None and text.find(g.stop_reason) == min(hits)[0]
    assert markers_whole(out, MARKERS)


def test_split_marker_tokens_travel_whole(split_tok: Tokenizer) -> None:
    text = "Hmm<think>step by step</think>\n\nok <tool_call>{}</tool_call> 🙂"
    ids = split_tok.encode(text, add_special_tokens=False).ids
    assert len(split_tok.encode("<think>", add_special_tokens=False).ids) > 1
    d = Detokenizer(split_tok, hold=MARKERS)
    pieces = [d.push(i) for i in ids] + [d.flush()]
    assert "".join(pieces) == text
    assert not any(REPLACEMENT in p for p in pieces)
    assert markers_whole(pieces, MARKERS)
    assert sum("<think>" in p for p in pieces) == 1
    # Control: without `hold`, the same stream does split the markers.
    bare = Detokenizer(split_tok)
    assert not markers_whole([bare.push(i) for i in ids] + [bare.flush()], MARKERS)


def test_detokenizer_stop_in_tokens(split_tok: Tokenizer) -> None:
    text = "alpha beta gamma"
    ids = split_tok.encode(text, add_special_tokens=False).ids
    d = Detokenizer(split_tok, stop=["beta"])
    pieces = []
    for i in ids:
        pieces.append(d.push(i))
        if d.stop_reason:
            break
    assert "".join(pieces) == "alpha "
    assert d.stop_reason == "beta"
    assert d.flush() == ""
