"""The worker's tokenizer: decode for the detokenizer, encode for scripts, EOS lookup."""

from __future__ import annotations

from pathlib import Path
from typing import Any


class WorkerTokenizer:
    """A `tokenizers.Tokenizer` from tokenizer.json, or transformers' AutoTokenizer as fallback."""

    def __init__(self, path: Path) -> None:
        self._fast: Any = None
        self._hf: Any = None
        if (path / "tokenizer.json").is_file():
            from tokenizers import Tokenizer

            self._fast = Tokenizer.from_file(str(path / "tokenizer.json"))
        else:
            from transformers import AutoTokenizer

            self._hf = AutoTokenizer.from_pretrained(str(path))

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        if self._fast is not None:
            return str(self._fast.decode(ids, skip_special_tokens=skip_special_tokens))
        return str(self._hf.decode(ids, skip_special_tokens=skip_special_tokens))

    def encode(self, text: str) -> list[int]:
        if self._fast is not None:
            return list(self._fast.encode(text, add_special_tokens=False).ids)
        return list(self._hf.encode(text, add_special_tokens=False))

    def backend(self) -> Any:
        """The `tokenizers.Tokenizer` (llguidance's vocabulary is built from it)."""
        if self._fast is not None:
            return self._fast
        backend = getattr(self._hf, "backend_tokenizer", None)
        if backend is None:
            raise ValueError("constrained decoding needs a fast (tokenizer.json) tokenizer")
        return backend

    def token_to_id(self, token: str) -> int | None:
        if self._fast is not None:
            tid = self._fast.token_to_id(token)
            return int(tid) if tid is not None else None
        tid = self._hf.convert_tokens_to_ids(token)
        return tid if isinstance(tid, int) and tid != self._hf.unk_token_id else None
