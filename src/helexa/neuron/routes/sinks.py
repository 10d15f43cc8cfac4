"""How each text endpoint turns a generation into bytes (stream) or a body (non-stream)."""

from __future__ import annotations

from typing import Any

from helexa.neuron.engine.frames import Done
from helexa.neuron.openai import chat as oc
from helexa.neuron.openai import completions as ocm
from helexa.neuron.openai import replies
from helexa.neuron.openai import responses as ra
from helexa.neuron.openai import responses_reply as rr
from helexa.neuron.parse import OutputParser
from helexa.wire import sse
from helexa.wire.errors import ApiError


class Sink:
    """How one endpoint turns generation into bytes (stream) or a body (non-stream)."""

    def __init__(self, model: str, parser: OutputParser | None) -> None:
        self.model = model
        self.parser = parser
        self.text: list[str] = []

    def start(self) -> bytes:
        return b""

    def delta(self, text: str, tokens: int) -> bytes:
        return b""

    def end(self, done: Done, usage: replies.Usage) -> bytes:
        return b""

    def error(self, err: ApiError) -> bytes:
        return sse.error_frame(err)

    def body(self, done: Done, usage: replies.Usage) -> dict[str, Any]:
        raise NotImplementedError

    def finish_parser(self, done: Done) -> list[Any]:
        assert self.parser is not None
        return self.parser.finish(hit_cap=done.finish_reason == "length")


class ChatSink(Sink):
    def __init__(
        self, model: str, parser: OutputParser, include_usage: bool, constrained: bool = False
    ) -> None:
        super().__init__(model, parser)
        self.stream = oc.ChatStream(model, include_usage=include_usage)
        self.constrained = constrained

    def start(self) -> bytes:
        return self.stream.first()

    def delta(self, text: str, tokens: int) -> bytes:
        assert self.parser is not None
        events = self.parser.feed(text, tokens)
        return self.stream.events(events) if events else b""

    def end(self, done: Done, usage: replies.Usage) -> bytes:
        assert self.parser is not None
        tail = self.stream.events(self.finish_parser(done))
        p = self.parser
        unfinished = self.constrained and p.hit_cap
        return tail + self.stream.end(p.finish_reason, done.stop_reason, usage, unfinished)

    def body(self, done: Done, usage: replies.Usage) -> dict[str, Any]:
        assert self.parser is not None
        self.finish_parser(done)
        return oc.chat_completion(
            self.model, self.parser, usage, done.stop_reason, constrained=self.constrained
        )


class CompletionSink(Sink):
    def __init__(self, model: str, include_usage: bool) -> None:
        super().__init__(model, None)
        self.stream = ocm.CompletionStream(model, include_usage=include_usage)

    def delta(self, text: str, tokens: int) -> bytes:
        if not text:
            return b""
        self.text.append(text)
        return self.stream.text(text)

    def end(self, done: Done, usage: replies.Usage) -> bytes:
        return self.stream.end(done.finish_reason, usage)

    def body(self, done: Done, usage: replies.Usage) -> dict[str, Any]:
        finish = done.finish_reason
        return ocm.completion(self.model, "".join(self.text), finish, usage)


class ResponsesSink(Sink):
    def __init__(self, model: str, parser: OutputParser, req: ra.ResponsesRequest) -> None:
        super().__init__(model, parser)
        self.req = req
        self.stream = rr.ResponsesStream(req)

    def start(self) -> bytes:
        return self.stream.start()

    def delta(self, text: str, tokens: int) -> bytes:
        assert self.parser is not None
        events = self.parser.feed(text, tokens)
        return self.stream.events(events) if events else b""

    def end(self, done: Done, usage: replies.Usage) -> bytes:
        tail = self.stream.events(self.finish_parser(done))
        return tail + self.stream.finish(done.finish_reason == "length", usage)

    def error(self, err: ApiError) -> bytes:
        return self.stream.error(err)

    def body(self, done: Done, usage: replies.Usage) -> dict[str, Any]:
        assert self.parser is not None
        self.finish_parser(done)
        return rr.response_body(self.req, self.parser, usage)
