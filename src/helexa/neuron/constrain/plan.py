"""Which grammar a chat request's output must match, if any, given its rendered prompt.

The grammar depends on where the prompt leaves the model: a prompt that ends inside an open
`<think>` lets it think freely and constrains only after `</think>` (`Constraint.after`, so no
mask is computed while it thinks); one that ends after a closed (empty) think block, or a model
without think markers, is constrained from the first token; otherwise the model may choose to
think first, and the grammar allows an optional `<think>…</think>` block.
"""

from __future__ import annotations

from helexa.neuron.constrain.grammar import THINK_CLOSE, THINK_OPEN, Tool, build, check_schema
from helexa.neuron.engine.frames import Constraint
from helexa.neuron.openai.chat import ChatRequest, tool_function, tool_name
from helexa.wire.errors import ApiError


def _think(prompt: str, reasoning: bool) -> str | None:
    tail = prompt.rstrip()
    if tail.endswith(THINK_OPEN):
        return "closed"
    if not reasoning or tail.endswith(THINK_CLOSE):
        return None
    return "optional"


def xml_calls(template: str | None) -> bool:
    """The chat template writes calls in Qwen3-Coder's XML form (`<function=…>`)."""
    return template is not None and "<function=" in template


def constraint_for(
    chat: ChatRequest, prompt: str, reasoning: bool, xml: bool = False
) -> Constraint | None:
    """The request's `Constraint` (None when unconstrained), or 400 `invalid_value` naming a
    schema that can't be enforced; `reasoning`: the model has think markers; `xml`: its calls
    are Qwen3-Coder XML (`xml_calls`). Compiling a client's schema can take a while: call it
    off the event loop.

    Under "auto" with one call at most and no response format, enforcing the call's arguments
    is a bonus the client didn't ask for: a tool schema we can't enforce leaves that request
    unconstrained (the parser still keeps one call) instead of failing it."""
    if not chat.constrained:
        return None
    if chat.schema is not None:
        check_schema(chat.schema, chat.schema_param)
    forced = chat.tool_choice == "required"  # a call, not the schema's answer
    prose = not forced and chat.schema is None  # "auto", one call at most
    tools = []
    for i, t in chat.grammar_tools():
        params = tool_function(t).get("parameters")
        if params is not None:
            try:
                check_schema(params, chat.tools_param.format(i=i))
            except ApiError:
                if prose:
                    return None
                raise
        tools.append(Tool(tool_name(t), params))
    think = _think(prompt, reasoning)
    schema = None if forced and tools else chat.schema
    grammar = build(
        schema=schema, tools=tools, max_calls=chat.call_limit, think=think, xml=xml, prose=prose
    )
    return Constraint(grammar, THINK_CLOSE if think == "closed" else None)
