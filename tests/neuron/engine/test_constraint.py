"""Constrained decoding's pieces without a model: the vocabulary llguidance sees (markers are
text, EOS is special), compiled grammars and their cache, the `after` marker, logit_bias checks,
and the decode loop ending a generation when its grammar completes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from helexa.neuron.engine.constraint import Constrained, Grammars, hf_vocabulary
from helexa.neuron.engine.detok import Detokenizer
from helexa.neuron.engine.errors import RequestError
from helexa.neuron.engine.frames import Constraint, Delta, Done
from helexa.neuron.engine.generation import GenerationState, step
from helexa.neuron.engine.logit_bias import logit_bias

N_VOCAB = 640  # the tiny tokenizer's 606 tokens, padded as a model's logits are
EOS = 2


@pytest.fixture(scope="module")
def tok(tmp_path_factory: pytest.TempPathFactory) -> Any:
    pytest.importorskip("transformers")
    from tokenizers import Tokenizer

    from fixtures.tiny import build_tokenizer

    d = tmp_path_factory.mktemp("tok")
    build_tokenizer(d)
    return Tokenizer.from_file(str(d / "tokenizer.json"))


@pytest.fixture(scope="module")
def grammars(tok: Any) -> Grammars:
    return Grammars(lambda: hf_vocabulary(tok, [EOS], N_VOCAB), [EOS])


def ids(tok: Any, text: str) -> list[int]:
    return list(tok.encode(text, add_special_tokens=False).ids)


def allowed_ids(c: Constrained) -> set[int]:
    return set(np.flatnonzero(~c.banned()).tolist())


def test_markers_are_text_and_eos_is_special(tok: Any, grammars: Grammars) -> None:
    call = tok.token_to_id("<tool_call>")
    c = grammars.open(Constraint('start: "<tool_call>" %json{"type": "object"}'))
    assert c is not None
    assert call in allowed_ids(c)  # the added token, not only its spelling
    for t in [call, *ids(tok, '{"a": 1}')]:
        c.advance(t)
    assert c.complete
    assert grammars.vocab.is_special_token(EOS)
    assert not grammars.vocab.is_special_token(call)


def test_token_bytes_are_what_llguidance_reads_from_tokenizer_json(tok: Any) -> None:
    import llguidance as llg

    from helexa.neuron.engine.constraint import _byte_level_texts

    ours = _byte_level_texts(tok, N_VOCAB)
    assert ours is not None
    base = llg.LLTokenizer(tok.to_str(), n_vocab=N_VOCAB, eos_token=[EOS])
    real = range(tok.get_vocab_size())
    differ = [i for i in real if ours[i] != base.decode_bytes([i])]
    # only the raw byte 0xff, which llguidance reserves as its special-token mark
    assert [ours[i] for i in differ] == [b"\xff"]
    assert ours[tok.token_to_id("</think>")] == b"</think>"


def test_a_sentencepiece_style_vocabulary_goes_through_llguidance() -> None:
    from tokenizers import Tokenizer, decoders, models, normalizers, trainers

    sp = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
    sp.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    sp.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    )
    trainer = trainers.BpeTrainer(vocab_size=200, special_tokens=["<unk>", "<s>", "</s>"])
    sp.train_from_iterator(["hello world, the quick brown fox"] * 20, trainer=trainer)
    sp.add_tokens(["<tool_call>"])
    n = sp.get_vocab_size()
    g = Grammars(lambda: hf_vocabulary(sp, [2], n), [2])
    assert g.vocab.decode_bytes(sp.encode("hello").ids) == b" hello"  # "▁" is a space
    c = g.open(Constraint('start: "<tool_call>" " hello"'))
    assert c is not None
    assert sp.token_to_id("<tool_call>") in allowed_ids(c)


def test_prepared_in_the_background(tok: Any) -> None:
    g = Grammars(lambda: hf_vocabulary(tok, [EOS], N_VOCAB), [EOS])
    g.prepare()
    g.prepare()  # once
    assert g.vocab.vocab_size == N_VOCAB
    assert g.open(Constraint('start: "x"')) is not None


def test_eos_only_where_the_grammar_accepts(tok: Any, grammars: Grammars) -> None:
    c = grammars.open(Constraint('start: "ab" | "abab"'))
    assert c is not None
    for t in ids(tok, "ab"):
        assert EOS not in allowed_ids(c)
        c.advance(t)
    assert EOS in allowed_ids(c) and not c.complete  # "ab" may end, or go on to "abab"


def test_mask_sets_minus_inf_in_place(grammars: Grammars) -> None:
    c = grammars.open(Constraint('start: "Hello"'))
    assert c is not None
    logits = np.zeros(N_VOCAB, dtype=np.float32)
    c.mask(logits)
    ok = np.isfinite(logits)
    assert ok.any() and not ok.all()
    assert set(np.flatnonzero(ok).tolist()) == allowed_ids(c)


def test_compiled_once_and_matchers_are_independent(tok: Any, grammars: Grammars) -> None:
    g = 'start: "x" "y"'
    a, b = grammars.open(Constraint(g)), grammars.open(Constraint(g))
    assert a is not None and b is not None
    assert a.matcher is not b.matcher
    a.advance(ids(tok, "x")[0])
    assert allowed_ids(a) != allowed_ids(b)
    assert list(grammars._compiled)[-1] == g


@pytest.mark.parametrize(
    ("grammar", "why"),
    [
        ("start: nothing_here", "unknown name"),
        ('start: %json{"type": "nonsense"}', "nonsense"),
    ],
)
def test_a_grammar_that_does_not_compile_is_invalid_value(
    grammars: Grammars, grammar: str, why: str
) -> None:
    with pytest.raises(RequestError) as ei:
        grammars.open(Constraint(grammar))
    assert (ei.value.code, ei.value.param) == ("invalid_value", "constraint")
    assert why in ei.value.message


def test_a_tokenizer_that_cannot_be_used_is_invalid_value() -> None:
    def broken() -> Any:
        raise ValueError("no tokenizer.json")

    for prepared in (False, True):
        g = Grammars(broken, [EOS])
        if prepared:
            g.prepare()
        with pytest.raises(RequestError) as ei:
            g.open(Constraint('start: "x"'))
        assert "no tokenizer.json" in ei.value.message


def test_after_the_marker_the_grammar_applies(tok: Any, grammars: Grammars) -> None:
    c = grammars.open(Constraint('start: "{}"', after="</think>"))
    assert c is not None
    free = allowed_ids(c)
    assert EOS not in free and len(free) == N_VOCAB - 1  # anything but EOS
    for t in ids(tok, "let me think"):
        c.advance(t)
        assert allowed_ids(c) == free
    c.advance(tok.token_to_id("</think>"))
    assert allowed_ids(c) < free
    c.advance(ids(tok, "{}")[0])
    for t in ids(tok, "{}")[1:]:
        c.advance(t)
    assert c.complete


def test_a_marker_over_two_tokens_with_text_after_it_in_the_last(
    tok: Any, grammars: Grammars
) -> None:
    c = grammars.open(Constraint('start: "lo" "de"', after="xHel"))
    assert c is not None
    for t in ids(tok, "x") + ids(tok, "Hello"):  # "Hello" is one token: "lo" is past the marker
        c.advance(t)
    assert not c.complete
    c.advance(ids(tok, "de")[0])
    assert c.complete


def test_text_after_the_marker_that_the_grammar_refuses(tok: Any, grammars: Grammars) -> None:
    c = grammars.open(Constraint('start: "x"', after="Hel"))
    assert c is not None
    with pytest.raises(RequestError) as ei:
        c.advance(ids(tok, "Hello")[0])
    assert (ei.value.code, ei.value.param) == ("invalid_value", "constraint")


# ---- logit_bias ---------------------------------------------------------------------------------


def test_logit_bias_adds_and_bans() -> None:
    b = logit_bias({"logit_bias": {"3": 5, "7": -100, 9: -2.5}}, 10)
    assert b is not None
    logits = np.zeros(10, dtype=np.float32)
    b.apply(logits)
    assert logits[3] == 5 and logits[9] == -2.5 and logits[7] == -np.inf
    assert logit_bias({}, 10) is None and logit_bias({"logit_bias": {}}, 10) is None


@pytest.mark.parametrize(
    "bias",
    [[1, 2], {"x": 1}, {"10": 1}, {"-1": 1}, {"1": 101}, {"1": "5"}, {"1": True}, {"1": 1, 1: 2}],
)
def test_bad_logit_bias_is_invalid_value(bias: Any) -> None:
    with pytest.raises(RequestError) as ei:
        logit_bias({"logit_bias": bias}, 10)
    assert (ei.value.code, ei.value.param) == ("invalid_value", "logit_bias")


# ---- the decode loop -----------------------------------------------------------------------------


class Scripted:
    """A model whose logits prefer the next token of `script`, then token `fallback`; `pick`
    masks as an engine does and takes the argmax."""

    def __init__(self, script: list[int], fallback: int) -> None:
        self.script = script
        self.fallback = fallback
        self.eos_ids = frozenset([EOS])

    def logits(self, s: GenerationState) -> np.ndarray:
        out = np.zeros(N_VOCAB, dtype=np.float32)
        k = s.step_no
        out[self.script[k] if k < len(self.script) else self.fallback] = 10.0
        return out

    def pick(self, s: GenerationState, logits: np.ndarray) -> int:
        if s.constraint is not None:
            s.constraint.mask(logits)
        return int(np.argmax(logits))

    def release(self, s: GenerationState) -> None:
        pass


class _Quiet:
    def observe(self, token: int) -> None:
        pass


def run(model: Scripted, c: Constrained | None, tok: Any, max_tokens: int) -> Iterator[Any]:
    s = GenerationState("r", [1], max_tokens, _Quiet(), Detokenizer(tok), constraint=c)
    while not s.finished:
        (res,) = step(model, [s])
        assert res.error is None, res.error
        yield from res.events


def test_the_loop_ends_when_the_grammar_completes(tok: Any, grammars: Grammars) -> None:
    schema = {
        "type": "object",
        "properties": {"k": {"enum": ["v"]}},
        "required": ["k"],
        "additionalProperties": False,
        "x-guidance": {"whitespace_flexible": False},
    }
    c = grammars.open(Constraint("start: %json" + json.dumps(schema)))
    # a model that would say "Hello" forever: the mask leaves it only the JSON
    events = list(run(Scripted([], ids(tok, "Hello")[0]), c, tok, 50))
    done = events[-1]
    assert isinstance(done, Done) and done.finish_reason == "stop"
    text = "".join(e.text for e in events if isinstance(e, Delta))
    assert json.loads(text) == {"k": "v"}
    assert done.completion_tokens < 50


def test_the_loop_runs_out_of_tokens_as_length(tok: Any, grammars: Grammars) -> None:
    c = grammars.open(Constraint('start: "Hello world and more"'))
    events = list(run(Scripted([], 7), c, tok, 2))
    assert isinstance(events[-1], Done) and events[-1].finish_reason == "length"


def test_free_text_then_the_grammar(tok: Any, grammars: Grammars) -> None:
    c = grammars.open(Constraint('start: "{}"', after="</think>"))
    # the model would end after "Let me": EOS is barred until the marker, so it goes on
    script = [*ids(tok, "Let me"), EOS, *ids(tok, " think"), tok.token_to_id("</think>")]
    events = list(run(Scripted(script, 5), c, tok, 40))
    text = "".join(e.text for e in events if isinstance(e, Delta))
    assert text.startswith("Let me") and text.endswith(" think</think>{}")
    assert isinstance(events[-1], Done) and events[-1].finish_reason == "stop"


# ---- the torch harness's pick ----------------------------------------------------------------


def test_torch_pick_applies_bias_then_mask_and_checks_the_raw_logits(
    tok: Any, grammars: Grammars
) -> None:
    torch = pytest.importorskip("torch")
    from helexa.neuron.engine.errors import Fault
    from helexa.neuron.engine.sampling import Sampler, pick_checked
    from helexa.neuron.engine.sampling_params import SamplingParams

    def sampler() -> Sampler:
        return Sampler(
            SamplingParams(temperature=0.0),
            vocab_size=N_VOCAB,
            device=torch.device("cpu"),
            prompt_ids=[],
        )

    x, y = ids(tok, "x")[0], ids(tok, "y")[0]
    logits = torch.zeros(N_VOCAB)
    logits[EOS] = 9.0  # the model's favourite, but the grammar can't end yet
    bias = logit_bias({"logit_bias": {str(y): 5, str(x): 3}}, N_VOCAB)
    c = grammars.open(Constraint('start: "x" | "y"'))
    assert pick_checked(sampler(), logits.clone(), "t", bias, c) == y
    bias = logit_bias({"logit_bias": {str(y): -100, str(x): 3}}, N_VOCAB)
    assert pick_checked(sampler(), logits.clone(), "t", bias, c) == x
    poisoned = logits.clone()
    poisoned[7] = float("nan")  # a token the mask removes: still a fault
    with pytest.raises(Fault):
        pick_checked(sampler(), poisoned, "t", None, c)
