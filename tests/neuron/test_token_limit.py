"""A model's `limit`: a client may send `input` tokens and still get `output`."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from helexa.neuron.views import token_limit


def test_default_caps_on_a_long_context_model() -> None:
    assert token_limit(40960, 16384, 8192) == {"context": 24576, "input": 16384, "output": 8192}
    assert token_limit(None, 40960, 8192) == {"context": 49152, "input": 40960, "output": 8192}


def test_an_8k_model_splits_its_context_instead_of_reporting_input_0() -> None:
    assert token_limit(8192, 16384, 8192) == {"context": 8192, "input": 4096, "output": 4096}
    assert token_limit(4096, 16384, 8192) == {"context": 4096, "input": 2048, "output": 2048}


def test_a_small_prompt_cap_leaves_the_rest_to_output() -> None:
    assert token_limit(None, 1000, 8000) == {"context": 9000, "input": 1000, "output": 8000}
    assert token_limit(4096, 1000, 8000) == {"context": 4096, "input": 1000, "output": 3096}


@given(
    mpe=st.one_of(st.none(), st.integers(2, 1 << 20)),
    max_prompt=st.integers(1, 1 << 18),
    max_output=st.integers(1, 1 << 18),
)
def test_input_plus_output_fits_and_neither_is_0(
    mpe: int | None, max_prompt: int, max_output: int
) -> None:
    lim = token_limit(mpe, max_prompt, max_output)
    assert lim["context"] == min(mpe or 1 << 30, max_prompt + max_output)
    assert 1 <= lim["input"] <= max_prompt
    assert 1 <= lim["output"] <= max_output
    assert lim["input"] + lim["output"] <= lim["context"]
