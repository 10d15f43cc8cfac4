"""Incremental detokenisation for the worker: token ids in, text that is safe to stream out.

Three things are held back until they are certain:
- an incomplete UTF-8 character (a byte-level token can end mid-character; decoding it alone
  gives U+FFFD, so text is only released once the decode of the window no longer ends in one);
- a possible start of a stop string (a matched stop string is cut out and ends the stream);
- a possible start of a `hold` marker such as `<think>` (a marker always travels whole).

Pure Python over `tokenizers`; no torch, so the daemon's tests can use it too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

REPLACEMENT = "\ufffd"


class Decoder(Protocol):
    """What we need from a tokenizer: `tokenizers.Tokenizer` has it."""

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str: ...


class IncrementalDecoder:
    """Token ids → stable text, never ending inside a UTF-8 character.

    Decodes a small window `ids[prefix:]` and compares it with `ids[prefix:read]` (the part
    already released), as TGI and vLLM do: the context in front of the new tokens lets
    decoders that strip a leading space (SentencePiece) decode the continuation correctly.
    """

    def __init__(self, tokenizer: Decoder, *, skip_special_tokens: bool = True) -> None:
        self.tok = tokenizer
        self.skip = skip_special_tokens
        self.ids: list[int] = []
        self._prefix = 0
        self._read = 0

    def _decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=self.skip) if ids else ""

    def push(self, token_id: int) -> str:
        """Add one token; return the text it (and any tokens waiting on it) completes."""
        self.ids.append(token_id)
        prefix_text = self._decode(self.ids[self._prefix : self._read])
        new_text = self._decode(self.ids[self._prefix :])
        if len(new_text) > len(prefix_text) and not new_text.endswith(REPLACEMENT):
            out = new_text[len(prefix_text) :]
            self._prefix = self._read
            self._read = len(self.ids)
            return out
        return ""

    def flush(self) -> str:
        """The text still waiting at the end of the stream (possibly a genuine U+FFFD)."""
        prefix_text = self._decode(self.ids[self._prefix : self._read])
        new_text = self._decode(self.ids[self._prefix :])
        self._prefix = self._read = len(self.ids)
        return new_text[len(prefix_text) :] if len(new_text) > len(prefix_text) else ""


class TextGate:
    """Text chunks → releasable text, cutting at the first stop string and never splitting a
    `hold` marker or releasing a possible prefix of a stop string or marker."""

    def __init__(self, stop: Sequence[str] = (), hold: Sequence[str] = ()) -> None:
        self.stop = [s for s in dict.fromkeys(stop) if s]
        self.hold = [h for h in dict.fromkeys(hold) if h]
        self._watch = self.stop + self.hold
        self.pending = ""
        self.stop_reason: str | None = None

    def push(self, text: str) -> str:
        """Add text; return what can go out now. After a stop match, returns the text before the
        match once and sets `stop_reason`; later pushes return ""."""
        if self.stop_reason is not None:
            return ""
        self.pending += text
        buf = self.pending
        if self.stop:
            hit = self._first_stop(buf)
            if hit is not None:
                pos, s = hit
                self.stop_reason = s
                self.pending = ""
                return buf[:pos]
        cut = len(buf) - self._held_suffix(buf)
        cut = self._not_inside_marker(buf, cut)
        self.pending = buf[cut:]
        return buf[:cut]

    def flush(self) -> str:
        """End of stream: whatever is held is final text now (no stop string can complete)."""
        if self.stop_reason is not None:
            return ""
        out, self.pending = self.pending, ""
        return out

    def _first_stop(self, buf: str) -> tuple[int, str] | None:
        best: tuple[int, str] | None = None
        for s in self.stop:
            i = buf.find(s)
            if i >= 0 and (best is None or i < best[0]):
                best = (i, s)
        return best

    def _held_suffix(self, buf: str) -> int:
        """Length of the longest suffix of buf that is a proper prefix of a watched string."""
        longest = 0
        for w in self._watch:
            for n in range(min(len(w) - 1, len(buf)), longest, -1):
                if buf.endswith(w[:n]):
                    longest = n
                    break
        return longest

    def _not_inside_marker(self, buf: str, cut: int) -> int:
        """Move the cut back to the start of any complete marker it would split."""
        changed = True
        while changed:
            changed = False
            for m in self.hold:
                i = buf.find(m)
                while 0 <= i < cut:
                    if cut < i + len(m):
                        cut, changed = i, True
                        break
                    i = buf.find(m, i + 1)
        return cut


class Detokenizer:
    """IncrementalDecoder + TextGate: what the generation loop calls once per sampled token."""

    def __init__(
        self,
        tokenizer: Decoder,
        *,
        stop: Sequence[str] = (),
        hold: Sequence[str] = (),
        skip_special_tokens: bool = True,
    ) -> None:
        self.decoder = IncrementalDecoder(tokenizer, skip_special_tokens=skip_special_tokens)
        self.gate = TextGate(stop, hold)

    @property
    def stop_reason(self) -> str | None:
        return self.gate.stop_reason

    def push(self, token_id: int) -> str:
        text = self.decoder.push(token_id)
        return self.gate.push(text) if text else ""

    def flush(self) -> str:
        """End of stream (EOS or the cap): the held tail, unless a stop string ended it."""
        tail = self.decoder.flush()
        if self.gate.stop_reason is not None:
            return ""
        out = self.gate.push(tail) if tail else ""
        if self.gate.stop_reason is not None:
            return out
        return out + self.gate.flush()
