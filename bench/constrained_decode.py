"""Constrained decoding on a 151k-token vocabulary: what a JSON-schema grammar costs per token.

Builds (once, cached) a byte-level BPE tokenizer with Qwen's vocabulary size — 151,643 tokens
trained with `tokenizers` on the Python standard library and the installed `transformers`
sources (~85 MB of code and docstrings, ~20 s), plus Qwen's special tokens and think/tool-call
markers, logits padded to 151,936 — and a ~100M-parameter Qwen3 on it (random weights, tied
embeddings). Then reports:

  1. the worker's llguidance vocabulary build (once per worker, on its first constrained
     request) and the compile time of a typical forced tool call's grammar (built by the
     daemon's `helexa.neuron.constrain.grammar`): cold, and cached;
  2. the per-token mask cost of llguidance, xgrammar and outlines-core on the same vocabulary
     and schema, walking a valid document token by token (mask computed and applied to a
     151,936-entry float32 logits row, then the token consumed), plus each one's compile time;
     xgrammar and outlines-core are optional: install them outside the project, e.g.
     `pip install --target /tmp/cd-libs --no-deps xgrammar apache-tvm-ffi outlines-core` and
     run with `PYTHONPATH=/tmp/cd-libs`;
  3. decode tok/s of a real worker (torch harness; `--harness llamacpp` or `both` for the GGUF
     one) without and with a JSON-schema constraint, interleaved runs, medians; EOS is banned
     with logit_bias in both so both runs decode the same number of tokens.

Targets: constrained decode >= 0.9x unconstrained, grammar compile <= 50 ms. Numbers are
reported, never asserted.

    python bench/constrained_decode.py [--tokens 128] [--runs 3] [--layers 8] [--hidden 512]
    python bench/constrained_decode.py --quick        # small model, few tokens: a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import sysconfig
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "neuron"))

N_TOKENS = 151_643  # Qwen2/3's regular vocabulary
N_LOGITS = 151_936  # their logits row (padded)
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "helexa-bench"

# A typical tool: what an agent framework sends (nested object, enum, array, required fields).
TOOL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "location": {"type": "string", "description": "City and country"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 14},
        "include": {
            "type": "array",
            "items": {"type": "string", "enum": ["wind", "rain", "uv", "pollen"]},
        },
        "options": {
            "type": "object",
            "properties": {"hourly": {"type": "boolean"}, "lang": {"type": "string"}},
            "required": ["hourly"],
        },
    },
    "required": ["location", "unit"],
}
# Long replies for the decode runs: an array of records that can't close early.
LONG_SCHEMA: dict[str, Any] = {
    "type": "array",
    "minItems": 200,
    "items": {
        "type": "object",
        "properties": {
            "id": {"type": "integer", "minimum": 0, "maximum": 99999},
            "name": {"type": "string", "maxLength": 24},
            "kind": {"enum": ["file", "dir", "link"]},
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 8}, "maxItems": 3},
        },
        "required": ["id", "name", "kind", "tags"],
        "additionalProperties": False,
    },
}
DOC = {
    "location": "Paris, France",
    "unit": "celsius",
    "days": 7,
    "include": ["wind", "rain"],
    "options": {"hourly": True, "lang": "fr"},
}


def med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


# ---- the model --------------------------------------------------------------------------------


def _corpus() -> Iterator[str]:
    import transformers

    roots = [Path(sysconfig.get_paths()["stdlib"]), Path(transformers.__file__).parent]
    for root in roots:
        for p in sorted(root.rglob("*.py")):
            if root.name == "transformers" or "site-packages" not in p.parts:
                yield p.read_bytes().decode("utf-8", "replace")


def build_tokenizer(dst: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from fixtures.tiny import MARKERS, SPECIALS, TEMPLATE

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=N_TOKENS,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    fast.add_tokens(MARKERS, special_tokens=False)
    fast.chat_template = TEMPLATE.replace("OPENS_THINK", "false")
    fast.save_pretrained(dst)


def build(hidden: int, layers: int) -> Path:
    """The tokenizer and the model, cached under ~/.cache/helexa-bench (XDG_CACHE_HOME)."""
    tok_dir = CACHE / "tokenizer-151k"
    if not (tok_dir / "tokenizer.json").exists():
        t0 = time.perf_counter()
        build_tokenizer(tok_dir)
        print(f"trained the 151k tokenizer in {time.perf_counter() - t0:.1f} s -> {tok_dir}")
    dst = CACHE / f"qwen3-151k-h{hidden}-l{layers}"
    if (dst / "model.safetensors").exists():
        return dst
    import shutil

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from fixtures.tiny import model_config

    shutil.copytree(tok_dir, dst, dirs_exist_ok=True)
    tok = AutoTokenizer.from_pretrained(dst)
    heads = max(1, hidden // 64)
    cfg = model_config(
        "qwen3",
        N_LOGITS,
        tok.convert_tokens_to_ids("<|im_end|>"),
        tok.pad_token_id,
        hidden_size=hidden,
        intermediate_size=hidden * 8 // 3,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 2),
        head_dim=64,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
    )
    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    n = sum(p.numel() for p in model.parameters())
    model.save_pretrained(dst, safe_serialization=True)
    print(f"built a {n / 1e6:.0f}M-parameter Qwen3 ({N_LOGITS} logits) -> {dst}")
    return dst


# ---- 1. vocabulary and compile ------------------------------------------------------------------


def tool_grammar(name: str) -> str:
    from helexa.neuron.constrain.grammar import Tool, build

    return build(tools=[Tool(name, TOOL_SCHEMA)], max_calls=1)


def compile_times(path: Path, eos: int) -> Any:
    from tokenizers import Tokenizer

    from helexa.neuron.engine.constraint import Grammars, hf_vocabulary

    tok = Tokenizer.from_file(str(path / "tokenizer.json"))
    t0 = time.perf_counter()
    vocab = hf_vocabulary(tok, [eos], N_LOGITS)
    print(f"llguidance vocabulary (once per worker): {(time.perf_counter() - t0) * 1e3:.0f} ms")
    grammars = Grammars(lambda: vocab, [eos])
    cold, warm = [], []
    for i in range(5):
        g = tool_grammar(f"get_weather_{i}")  # a new grammar text: not cached
        t0 = time.perf_counter()
        grammars.compile(g)
        cold.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        grammars.compile(g)
        warm.append(time.perf_counter() - t0)
    c, w = med(cold) * 1e3, med(warm) * 1e3
    print(f"tool-call grammar compile: cold {c:.2f} ms, cached {w:.3f} ms (target <= 50 ms)")
    return vocab


# ---- 2. mask cost per token, three libraries --------------------------------------------------


def _walk(
    tokens: list[int], mask: Callable[[np.ndarray], None], eat: Callable[[int], None]
) -> tuple[float, float]:
    """Median µs per token to compute+apply the mask, and to consume the token."""
    row = np.zeros(N_LOGITS, dtype=np.float32)
    m, e = [], []
    for t in tokens:
        row.fill(0.0)
        t0 = time.perf_counter()
        mask(row)
        t1 = time.perf_counter()
        eat(t)
        t2 = time.perf_counter()
        if not np.isfinite(row[t]):
            raise RuntimeError(f"the mask refused token {t} of the document")
        m.append(t1 - t0)
        e.append(t2 - t1)
    return med(m) * 1e6, med(e) * 1e6


def lib_llguidance(vocab: Any, eos: int, doc_ids: list[int]) -> dict[str, float]:
    from helexa.neuron.constrain.grammar import json_rule
    from helexa.neuron.engine.constraint import Grammars
    from helexa.neuron.engine.frames import Constraint

    g = f"start: {json_rule(TOOL_SCHEMA)}"
    t0 = time.perf_counter()
    c = Grammars(lambda: vocab, [eos]).open(Constraint(g))
    compile_ms = (time.perf_counter() - t0) * 1e3
    assert c is not None
    mask_us, eat_us = _walk(doc_ids, c.mask, c.advance)
    return {"compile_ms": compile_ms, "mask_us": mask_us, "consume_us": eat_us}


def torch_steer(vocab: Any, eos: int, doc_ids: list[int]) -> float:
    """Median µs of the torch harness's mask step (`sampling.steer`) on a CPU logits row."""
    import torch

    from helexa.neuron.constrain.grammar import json_rule
    from helexa.neuron.engine.constraint import Grammars
    from helexa.neuron.engine.frames import Constraint
    from helexa.neuron.engine.sampling import steer

    c = Grammars(lambda: vocab, [eos]).open(Constraint(f"start: {json_rule(TOOL_SCHEMA)}"))
    assert c is not None
    row = torch.zeros(N_LOGITS)

    def mask(_: np.ndarray) -> None:
        steer(row, None, c)

    return _walk(doc_ids, mask, c.advance)[0]


def _apply(words: np.ndarray, row: np.ndarray) -> None:
    """A 32-bit-word allowed-token bitmask onto a logits row, as `Constrained.mask` does, so
    the three libraries differ only in computing the mask."""
    banned = np.unpackbits(np.invert(words).view(np.uint8), bitorder="little")[: row.shape[0]]
    np.copyto(row, -np.inf, where=banned.view(np.bool_))


def lib_xgrammar(path: Path, doc_ids: list[int]) -> dict[str, float]:
    import xgrammar as xgr
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    info = xgr.TokenizerInfo.from_huggingface(tok, vocab_size=N_LOGITS)
    compiler = xgr.GrammarCompiler(info, cache_enabled=False)
    t0 = time.perf_counter()
    compiled = compiler.compile_json_schema(
        json.dumps(TOOL_SCHEMA), any_whitespace=False, separators=(", ", ": ")
    )
    compile_ms = (time.perf_counter() - t0) * 1e3
    matcher = xgr.GrammarMatcher(compiled)
    bitmask = xgr.allocate_token_bitmask(1, N_LOGITS)

    words = bitmask.numpy()[0]

    def mask(row: np.ndarray) -> None:
        matcher.fill_next_token_bitmask(bitmask)
        _apply(words, row)

    def eat(t: int) -> None:
        if not matcher.accept_token(t):
            raise RuntimeError(f"xgrammar refused token {t}")

    mask_us, eat_us = _walk(doc_ids, mask, eat)
    return {"compile_ms": compile_ms, "mask_us": mask_us, "consume_us": eat_us}


def lib_outlines(vocab: Any, eos: int, doc_ids: list[int]) -> dict[str, float]:
    import outlines_core as oc
    from outlines_core.json_schema import build_regex_from_schema

    table: dict[bytes, list[int]] = {}
    for i in range(vocab.vocab_size):
        b = vocab.decode_bytes([i])
        if b and i != eos and not vocab.is_special_token(i):
            table.setdefault(b, []).append(i)
    t0 = time.perf_counter()
    regex = build_regex_from_schema(json.dumps(TOOL_SCHEMA), r"[ ]?")
    guide = oc.Guide(oc.Index(regex, oc.Vocabulary(eos, table)))
    compile_ms = (time.perf_counter() - t0) * 1e3
    words = np.zeros((N_LOGITS + 31) // 32, dtype=np.int32)

    def mask(row: np.ndarray) -> None:
        guide.write_mask_into(words.ctypes.data, words.size, 4)
        _apply(words, row)

    mask_us, eat_us = _walk(doc_ids, mask, lambda t: guide.advance(t, return_tokens=False))
    return {"compile_ms": compile_ms, "mask_us": mask_us, "consume_us": eat_us}


def libraries(path: Path, vocab: Any, eos: int, which: list[str]) -> None:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(path / "tokenizer.json"))
    text = json.dumps(DOC, separators=(", ", ": "))
    doc_ids = tok.encode(text, add_special_tokens=False).ids
    print(f"\nper-token mask cost, {len(doc_ids)}-token tool arguments document, {N_LOGITS} logits")
    runs = {
        "llguidance": lambda: lib_llguidance(vocab, eos, doc_ids),
        "xgrammar": lambda: lib_xgrammar(path, doc_ids),
        "outlines-core": lambda: lib_outlines(vocab, eos, doc_ids),
    }
    print(f"  {'library':<14} {'compile ms':>11} {'mask+apply us':>14} {'consume us':>11}")
    for name in which:
        try:
            r = runs[name]()
        except ImportError as e:
            print(f"  {name:<14} not installed ({e.name}); see the docstring")
            continue
        except Exception as e:  # a library that can't do this schema: say so, go on
            print(f"  {name:<14} failed: {type(e).__name__}: {e}")
            continue
        print(
            f"  {name:<14} {r['compile_ms']:>11.1f} {r['mask_us']:>14.0f} {r['consume_us']:>11.1f}"
        )
    if "llguidance" in which:
        us = torch_steer(vocab, eos, doc_ids)
        print(f"  llguidance's mask onto a torch CPU row (the torch harness): {us:.0f} us")


# ---- 3. decode in a real worker -----------------------------------------------------------------


def _decode(w: Any, prompt: list[int], tokens: int, extra: dict[str, Any]) -> float:
    """Tokens per second of one greedy request with EOS banned, from its send to its `done`
    (the 4-token prompt's prefill is in it: one step's worth)."""
    sampling = {"temperature": 0, "logit_bias": {str(min(w.ready["eos_token_ids"])): -100}}
    t0 = time.perf_counter()
    r = w.collect(w.submit(prompt, max_tokens=tokens, sampling=sampling, **extra))
    elapsed = time.perf_counter() - t0
    if r.end.get("completion_tokens") != tokens:
        raise RuntimeError(f"asked for {tokens} tokens, got {r.end}")
    return tokens / elapsed


def decode(path: Path, harness: str, tokens: int, runs: int) -> None:
    from workerctl import WorkerClient

    from helexa.neuron.constrain.grammar import json_rule

    spec: dict[str, Any] = {"path": str(path), "served_id": "bench"}
    if harness == "llamacpp":
        from fixtures.gguf import write_gguf

        gguf = path / "model-F32.gguf"
        if not gguf.exists():
            write_gguf(path, gguf, "F32")
        spec = {"path": str(gguf), "served_id": "bench", "harness": "llamacpp", "quant": None}
    threads = str(os.cpu_count() or 1)
    grammar = {"constraint": {"grammar": f"start: {json_rule(LONG_SCHEMA)}"}}
    free, constrained = [], []
    with WorkerClient.start(spec, env={"OMP_NUM_THREADS": threads}, timeout=600) as w:
        for i in range(runs + 1):
            prompt = [100 + i, 200 + i, 300 + i, 400 + i]
            a = _decode(w, prompt, tokens, {})
            b = _decode(w, prompt, tokens, grammar)
            if i:  # the first pair warms up (and builds the vocabulary)
                free.append(a)
                constrained.append(b)
    f, c = med(free), med(constrained)
    print(
        f"\n{harness} worker decode, {tokens} tokens, median of {runs}: unconstrained "
        f"{f:.1f} tok/s, JSON-schema constrained {c:.1f} tok/s -> {c / f:.3f}x (target >= 0.9)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--harness", choices=["torch", "llamacpp", "both", "none"], default="torch")
    ap.add_argument("--libs", default="llguidance,xgrammar,outlines-core")
    ap.add_argument("--quick", action="store_true", help="2 layers, 32 tokens, 1 run")
    args = ap.parse_args()
    if args.quick:
        args.layers, args.tokens, args.runs = 2, 32, 1
    path = build(args.hidden, args.layers)
    eos = json.loads((path / "config.json").read_text())["eos_token_id"]
    vocab = compile_times(path, eos)
    libraries(path, vocab, eos, [s for s in args.libs.split(",") if s])
    harnesses = ["torch", "llamacpp"] if args.harness == "both" else [args.harness]
    for h in harnesses if args.harness != "none" else []:
        decode(path, h, args.tokens, args.runs)


if __name__ == "__main__":
    main()
