"""A torch-free chat tokenizer: `tokenizers` + the model's Jinja chat template.

The daemon must count and build prompts without importing transformers (which imports torch),
yet produce exactly the tokens transformers' `apply_chat_template(..., add_generation_prompt=True)`
would. So this mirrors transformers 5's rendering: the same sandboxed Jinja environment and
globals, the same template selection, the same message normalisation (None-valued keys dropped,
reasoning aliases), the special-token variables, and encoding the rendered text with
`add_special_tokens=False`.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.utils
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import AddedToken, Tokenizer

from helexa.neuron.gguf_tokenizer import gguf_tokenizer
from helexa.wire.errors import ApiError

log = logging.getLogger("helexa.neuron.tokenizer")

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
TOOL_OPEN, TOOL_CLOSE = "<tool_call>", "</tool_call>"
SPECIAL_TOKEN_ATTRS = (
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
)
_TEXT_PARTS = {"text", "input_text", "output_text"}
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


class TokenizerError(Exception):
    """The directory has no usable tokenizer (e.g. no tokenizer.json)."""


# ---- the Jinja environment (as transformers builds it) -----------------------------------------


class _GenerationTag(jinja2.ext.Extension):
    """`{% generation %}…{% endgeneration %}` marks assistant spans for training masks; for
    rendering it is a no-op, but templates that use it must still compile."""

    tags = {"generation"}  # noqa: RUF012 - jinja's own class attribute

    def parse(self, parser: Any) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

    def _render(self, caller: Callable[[], str]) -> str:
        return caller()


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(
    x: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    return json.dumps(
        x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class _TemplateDict:
    def __call__(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict.fromkeys(*args, **kwargs)


class _TemplateNamespace(jinja2.utils.Namespace):
    """A namespace that refuses underscore-prefixed attributes (as transformers')."""

    def __init__(*args: Any, **kwargs: Any) -> None:  # jinja's signature trick: no `self`
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check_name(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(
                f"Chat templates cannot store underscore-prefixed attributes on a namespace, "
                f"but got {name!r}."
            )


def compile_template(source: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = _TemplateDict()
    env.globals["namespace"] = _TemplateNamespace
    return env.from_string(source)


# ---- message preprocessing -------------------------------------------------------------


def prepare_messages(messages: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI chat messages → what the template sees.

    `developer` is `system`; text-part arrays are joined with "\\n"; tool-call `arguments` given as
    a JSON string become an object; keys whose value is None are dropped and reasoning is
    aliased under `reasoning_content` and `thinking` (both as transformers does).
    """
    out = []
    for raw in messages:
        m = {k: v for k, v in raw.items() if v is not None}
        if m.get("role") == "developer":
            m["role"] = "system"
        content = m.get("content")
        if isinstance(content, list):
            m["content"] = "\n".join(
                str(p.get("text", ""))
                for p in content
                if isinstance(p, Mapping) and p.get("type", "text") in _TEXT_PARTS
            )
        if isinstance(m.get("tool_calls"), list):
            m["tool_calls"] = [_prepare_tool_call(tc) for tc in m["tool_calls"]]
        reasoning = next((m[k] for k in _REASONING_FIELDS if m.get(k) is not None), None)
        if reasoning is not None:
            m = {"thinking": reasoning, **m, "reasoning_content": reasoning}
        out.append(m)
    return out


def _prepare_tool_call(tc: Any) -> Any:
    if not isinstance(tc, Mapping):
        return tc
    tc = dict(tc)
    fn = tc.get("function")
    if isinstance(fn, Mapping) and isinstance(fn.get("arguments"), str):
        try:
            args = json.loads(fn["arguments"])
        except ValueError:
            return tc
        tc["function"] = {**fn, "arguments": args}
    return tc


def fold_late_system(messages: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """System messages after the conversation started, folded into the leading one; None when
    there are none. Many templates (Qwen3.5's: "System message must be at the beginning")
    refuse a late system turn that clients such as Claude Code send, so a rejected render is
    retried this way: the instructions keep system authority, only their position moves."""
    lead = 0
    while lead < len(messages) and messages[lead].get("role") == "system":
        lead += 1
    late = [m for m in messages[lead:] if m.get("role") == "system"]
    if not late:
        return None
    texts = [str(m.get("content") or "") for m in (*messages[:lead], *late)]
    system = {"role": "system", "content": "\n\n".join(t for t in texts if t)}
    return [system, *(m for m in messages[lead:] if m.get("role") != "system")]


# ---- the tokenizer -----------------------------------------------------------------------------


def _token_content(v: Any) -> str | None:
    if isinstance(v, str):
        return v
    if isinstance(v, Mapping) and isinstance(v.get("content"), str):
        return str(v["content"])
    return None


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        log.warning("%s is unreadable: %s", path, e)
        return {}
    return data if isinstance(data, dict) else {}


def _load_templates(root: Path, cfg: Mapping[str, Any]) -> str | dict[str, str] | None:
    """chat_template.jinja and additional_chat_templates/*.jinja win over tokenizer_config's
    `chat_template` (a string, or a list of {name, template})."""
    files: dict[str, str] = {}
    if (root / "chat_template.jinja").is_file():
        files["default"] = (root / "chat_template.jinja").read_text(encoding="utf-8")
    extra = root / "additional_chat_templates"
    if extra.is_dir():
        for f in sorted(extra.glob("*.jinja")):
            files[f.name.removesuffix(".jinja")] = f.read_text(encoding="utf-8")
    if len(files) == 1 and "default" in files:
        return files["default"]
    if files:
        return files
    ct = cfg.get("chat_template")
    if ct is None and (root / "chat_template.json").is_file():
        ct = _read_json(root / "chat_template.json").get("chat_template")
    if isinstance(ct, list):
        return {t["name"]: t["template"] for t in ct if isinstance(t, Mapping)}
    return ct if isinstance(ct, (str, dict)) else None


class ChatTokenizer:
    """Tokenizer + chat template of one model directory. Thread-safe for concurrent use."""

    def __init__(self, root: str | Path) -> None:
        """`root`: a model directory, or a `.gguf` file (tokenizer from its metadata)."""
        self.root = Path(root)
        cfg: dict[str, Any]
        if self.root.suffix.lower() == ".gguf":
            try:
                self.tokenizer, cfg = gguf_tokenizer(self.root)
            except (OSError, ValueError, KeyError) as e:
                raise TokenizerError(f"{self.root}: {e}") from e
            legacy: dict[str, Any] = {}
        else:
            tj = self.root / "tokenizer.json"
            if not tj.is_file():
                raise TokenizerError(f"{self.root} has no tokenizer.json")
            self.tokenizer = Tokenizer.from_file(str(tj))
            cfg = _read_json(self.root / "tokenizer_config.json")
            legacy = _read_json(self.root / "special_tokens_map.json")
        self.special_tokens: dict[str, str] = {}
        for attr in SPECIAL_TOKEN_ATTRS:
            value = _token_content(cfg.get(attr, legacy.get(attr)))
            if value is not None:
                self.special_tokens[attr] = value
        extra = cfg.get("extra_special_tokens")
        if isinstance(extra, Mapping):  # named extras are template variables too
            for k, v in extra.items():
                if (content := _token_content(v)) is not None:
                    self.special_tokens[k] = content
        self._add_missing_tokens(cfg, extra)
        self.tokenizer.encode_special_tokens = bool(cfg.get("split_special_tokens", False))
        self.chat_template = _load_templates(self.root, cfg)
        self._compiled: dict[str, jinja2.Template] = {}
        self._lock = threading.Lock()
        vocab = self.tokenizer.get_vocab(with_added_tokens=True)
        self.tool_call = TOOL_OPEN in vocab and TOOL_CLOSE in vocab
        self.reasoning = THINK_OPEN in vocab and THINK_CLOSE in vocab

    def _add_missing_tokens(self, cfg: Mapping[str, Any], extra: Any) -> None:
        """Special tokens named in tokenizer_config but absent from tokenizer.json are added,
        as transformers does when it loads the tokenizer."""
        vocab = self.tokenizer.get_vocab(with_added_tokens=True)
        decoder = cfg.get("added_tokens_decoder")
        if isinstance(decoder, Mapping):
            for _, tok in sorted(decoder.items(), key=lambda kv: int(kv[0])):
                content = _token_content(tok)
                if content is None or content in vocab:
                    continue
                spec = tok if isinstance(tok, Mapping) else {}
                self.tokenizer.add_tokens(
                    [
                        AddedToken(
                            content,
                            single_word=bool(spec.get("single_word", False)),
                            lstrip=bool(spec.get("lstrip", False)),
                            rstrip=bool(spec.get("rstrip", False)),
                            normalized=bool(spec.get("normalized", False)),
                            special=bool(spec.get("special", True)),
                        )
                    ]
                )
        names = list(self.special_tokens.values())
        extras = extra if isinstance(extra, list) else cfg.get("additional_special_tokens") or []
        names += [c for c in (_token_content(t) for t in extras) if c is not None]
        vocab = self.tokenizer.get_vocab(with_added_tokens=True)
        missing = [n for n in dict.fromkeys(names) if n not in vocab]
        if missing:
            self.tokenizer.add_special_tokens(
                [AddedToken(n, special=True, normalized=False) for n in missing]
            )

    # -- template ---------------------------------------------------------------------------

    @property
    def has_chat_template(self) -> bool:
        return bool(self.chat_template)

    def template_source(self, tools: Sequence[Any] | None = None) -> str | None:
        """Which template transformers would pick: `tool_use` when tools are given and one
        exists, else `default`."""
        ct = self.chat_template
        if isinstance(ct, dict):
            if tools is not None and "tool_use" in ct:
                return ct["tool_use"]
            return ct.get("default")
        return ct

    def _template(self, source: str) -> jinja2.Template:
        with self._lock:
            t = self._compiled.get(source)
            if t is None:
                t = self._compiled[source] = compile_template(source)
            return t

    def render(
        self,
        messages: Iterable[Mapping[str, Any]],
        tools: Sequence[Any] | None = None,
        *,
        add_generation_prompt: bool = True,
        model_id: str | None = None,
        **template_kwargs: Any,
    ) -> str:
        """The prompt text. `template_kwargs` are `chat_template_kwargs` (e.g. enable_thinking).

        Raises `400 unsupported_model_capability` without a template and `400 invalid_value`
        (param `messages`) when the template rejects the conversation.
        """
        source = self.template_source(tools)
        if not source:
            raise ApiError(
                400,
                "unsupported_model_capability",
                f"model '{model_id or self.root.name}' has no chat template; use /v1/completions",
            )
        msgs = prepare_messages(messages)
        if not msgs:
            raise ApiError(400, "invalid_value", "'messages' must not be empty", param="messages")
        variables = {**self.special_tokens, **template_kwargs}
        for reserved in ("messages", "tools", "documents", "add_generation_prompt"):
            variables.pop(reserved, None)
        tool_list = list(tools) if tools is not None else None

        def apply(msgs: list[dict[str, Any]]) -> str:
            return self._template(source).render(
                messages=msgs,
                tools=tool_list,
                documents=None,
                add_generation_prompt=add_generation_prompt,
                **variables,
            )

        try:
            try:
                return apply(msgs)
            except jinja2.exceptions.TemplateSyntaxError:
                raise
            except jinja2.exceptions.TemplateError:
                folded = fold_late_system(msgs)
                if folded is None:
                    raise
                return apply(folded)
        except jinja2.exceptions.TemplateSyntaxError as e:
            raise ApiError(
                500,
                "internal_server_error",
                f"the chat template of model '{model_id or self.root.name}' does not compile",
            ) from e
        except jinja2.exceptions.TemplateError as e:
            raise ApiError(
                400,
                "invalid_value",
                f"'messages' were rejected by the chat template: {str(e)[:300]}",
                param="messages",
            ) from e
        except (TypeError, ValueError, AttributeError, KeyError, IndexError) as e:
            raise ApiError(
                400,
                "invalid_value",
                "'messages' could not be rendered by the model's chat template",
                param="messages",
            ) from e

    def encode_chat(
        self,
        messages: Iterable[Mapping[str, Any]],
        tools: Sequence[Any] | None = None,
        *,
        chat_template_kwargs: Mapping[str, Any] | None = None,
        model_id: str | None = None,
    ) -> tuple[str, list[int]]:
        """(rendered prompt, token ids) with the generation prompt: the chat `prompt_tokens`."""
        text = self.render(messages, tools, model_id=model_id, **dict(chat_template_kwargs or {}))
        return text, self.encode(text, add_special_tokens=False)

    def prompt_opens_think(self, rendered: str) -> bool:
        """True when the generation prompt leaves a `<think>` open (parse starts in reasoning)."""
        return rendered.rstrip().endswith(THINK_OPEN)

    # -- encode / decode --------------------------------------------------------------------

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Raw text → ids. `add_special_tokens=True` matches transformers `tokenizer(text)`:
        only the tokenizer's post-processor adds anything (e.g. a BOS), Qwen adds nothing.
        A batch of one: `Tokenizer.encode` holds the GIL throughout (a 500 KB prompt stalls
        the event loop ~0.4 s even from a thread), `encode_batch` releases it."""
        return self.encode_batch([text], add_special_tokens)[0]

    def encode_batch(
        self, texts: Sequence[str], add_special_tokens: bool = True
    ) -> list[list[int]]:
        encs = self.tokenizer.encode_batch(list(texts), add_special_tokens=add_special_tokens)
        return [list(e.ids) for e in encs]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens))

    def token_to_id(self, token: str) -> int | None:
        tid = self.tokenizer.token_to_id(token)
        return None if tid is None else int(tid)

    @property
    def vocab_size(self) -> int:
        return int(self.tokenizer.get_vocab_size(with_added_tokens=True))


class TokenizerCache:
    """Up to `maxsize` ChatTokenizers keyed by local directory, least recently used evicted
    (/tokenize on models that are not loaded). Thread-safe; loading is blocking, so call
    `get` through `asyncio.to_thread`."""

    def __init__(self, maxsize: int = 8) -> None:
        self.maxsize = maxsize
        self._items: OrderedDict[str, ChatTokenizer] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, root: str | Path) -> ChatTokenizer:
        key = str(Path(root).resolve())
        with self._lock:
            tok = self._items.get(key)
            if tok is not None:
                self._items.move_to_end(key)
                return tok
        tok = ChatTokenizer(key)
        with self._lock:
            self._items[key] = tok
            self._items.move_to_end(key)
            while len(self._items) > self.maxsize:
                self._items.popitem(last=False)
        return tok

    def put(self, root: str | Path, tok: ChatTokenizer) -> None:
        """Register an already-built tokenizer (e.g. the one a loaded model uses)."""
        key = str(Path(root).resolve())
        with self._lock:
            self._items[key] = tok
            self._items.move_to_end(key)
            while len(self._items) > self.maxsize:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, root: object) -> bool:
        return isinstance(root, (str, Path)) and str(Path(root).resolve()) in self._items
