"""Tool calls (OpenAI function calling): the typed records and protocol of a chat model
that calls tools, a scripted one for tests, and how `automem serve` implements `tools` and
`tool_choice` on the local model.

Serving: the tools are described in the system prompt (the Hermes convention most small
instruction models have seen: a `<tools>` list, calls written as `<tool_call>{"name": ...,
"arguments": {...}}</tool_call>`), and, unless `tool_choice` is "none", the reply is decoded
under a grammar whose call body is each tool's JSON schema (llguidance's `%json`), so a call's
arguments are valid by construction. Earlier assistant tool calls and tool results are
rendered back into that convention (tool results as user messages: the chat template knows
only system, user and assistant).

`tool_choice`: "none" (no call, no grammar), "auto" (plain text, or one call), "required"
(exactly one call), or `{"type": "function", "function": {"name": N}}` (exactly one call of
N). One call per reply.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, Field

from agent_core.grammar import Grammar
from agent_core.models.base import ModelError
from agent_core.records import FinishReason, Message, SamplingParams

if TYPE_CHECKING:
    from agent_core.models.local import LocalModel

ToolChoice = Literal["auto", "none", "required"] | dict[str, Any]


class ToolCall(BaseModel):
    """One function call as the model wrote it; `arguments` is the raw JSON text."""

    id: str = Field(default_factory=lambda: f"call_{uuid.uuid4().hex[:12]}")
    name: str
    arguments: str


class ChatTurn(BaseModel):
    """One message of a tool-using conversation (OpenAI's roles, including "tool")."""

    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""
    tool_calls: list[ToolCall] = Field(default_factory=list)
    #: for role "tool": the call this answers
    tool_call_id: str | None = None
    name: str | None = None

    def openai(self) -> dict[str, Any]:
        """The chat-completions message."""
        out: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            out["tool_calls"] = [{"id": c.id, "type": "function",
                                  "function": {"name": c.name, "arguments": c.arguments}} for c in self.tool_calls]
        if self.role == "tool":
            out["tool_call_id"] = self.tool_call_id
        return out


class ToolCompletion(BaseModel):
    """A reply that may call tools."""

    text: str = ""
    tool_calls: list[ToolCall] = Field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    model: str = ""
    #: "length": cut off by the token limit (its calls may be incomplete: never run them)
    finish_reason: FinishReason = "stop"


@runtime_checkable
class ToolChatModel(Protocol):
    """A chat model that can call tools (an OpenAI-compatible endpoint with tool calling)."""

    model_id: str

    def complete_tools(self, turns: list[ChatTurn], params: SamplingParams, tools: list[dict[str, Any]],
                       tool_choice: ToolChoice = "auto") -> ToolCompletion:
        """Reply to `turns`, calling any of `tools` (OpenAI `tools` entries)."""
        ...


class ScriptedToolModel:
    """A deterministic `ToolChatModel` for tests: replies in order, or `replies(turns)`.

    Each reply is a `ToolCompletion`, a `(name, arguments)` pair (one call; arguments a dict
    or raw text) or a string (plain text). Usage: prompt tokens are the conversation's
    characters / 4, completion tokens the reply's, so budgets can be tested exactly."""

    def __init__(self, replies: list[Any] | Callable[[list[ChatTurn]], Any], model_id: str = "scripted-tools",
                 when_exhausted: Literal["error", "repeat_last"] = "error") -> None:
        self.model_id = model_id
        self._replies = replies
        self.when_exhausted = when_exhausted
        self.calls: list[list[ChatTurn]] = []
        self.tools_seen: list[list[dict[str, Any]]] = []

    def complete_tools(self, turns: list[ChatTurn], params: SamplingParams, tools: list[dict[str, Any]],
                       tool_choice: ToolChoice = "auto") -> ToolCompletion:
        self.calls.append([t.model_copy() for t in turns])
        self.tools_seen.append(tools)
        if callable(self._replies):
            reply = self._replies(turns)
        else:
            i = len(self.calls) - 1
            if i >= len(self._replies):
                if self.when_exhausted == "error" or not self._replies:
                    raise ModelError(f"scripted tool model has no reply left after {len(self._replies)}")
                i = len(self._replies) - 1
            reply = self._replies[i]
        if isinstance(reply, tuple):
            name, args = reply
            reply = ToolCompletion(tool_calls=[ToolCall(name=name, arguments=args if isinstance(args, str)
                                                        else json.dumps(args))])
        elif isinstance(reply, str):
            reply = ToolCompletion(text=reply)
        out = reply.model_copy()
        if not out.prompt_tokens:
            out.prompt_tokens = max(1, sum(len(t.content) + sum(len(c.arguments) for c in t.tool_calls)
                                           for t in turns) // 4)
        if not out.completion_tokens:
            out.completion_tokens = max(1, (len(out.text) + sum(len(c.arguments) for c in out.tool_calls)) // 4)
        out.model = self.model_id
        return out


# -- serving tools on the local model ---------------------------------------------------------

CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
_CALL = re.compile(re.escape(CALL_OPEN) + r"\s*(.*?)\s*" + re.escape(CALL_CLOSE), re.S)


class ToolRequestError(ValueError):
    """A request whose tools or tool_choice this server cannot honour (HTTP 400)."""


def tool_functions(tools: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """A request's OpenAI `tools` as name -> {"description", "parameters"}; ToolRequestError
    when an entry is not a function with a name and a JSON-schema object."""
    out = {}
    for t in tools:
        fn = t.get("function") if isinstance(t, dict) else None
        if not isinstance(t, dict) or t.get("type") != "function" or not isinstance(fn, dict) \
                or not isinstance(fn.get("name"), str):
            raise ToolRequestError('each tool must be {"type": "function", "function": {"name", "parameters"}}')
        params = fn.get("parameters") or {"type": "object", "properties": {}}
        if not isinstance(params, dict):
            raise ToolRequestError(f"tool {fn['name']!r}: parameters must be a JSON schema object")
        out[fn["name"]] = {"description": fn.get("description", ""), "parameters": params}
    return out


def tool_choice_mode(functions: dict[str, dict[str, Any]], tool_choice: Any) -> tuple[str, list[str]]:
    """(mode, names callable): mode none, auto or required."""
    if tool_choice is None or tool_choice == "auto":
        return ("auto", list(functions)) if functions else ("none", [])
    if tool_choice in ("none", "required"):
        if tool_choice == "required" and not functions:
            raise ToolRequestError('tool_choice "required" needs tools')
        return tool_choice, list(functions)
    if isinstance(tool_choice, dict) and isinstance(tool_choice.get("function"), dict):
        name = tool_choice["function"].get("name")
        if name not in functions:
            raise ToolRequestError(f"tool_choice names {name!r}, which is not among the tools {list(functions)}")
        return "required", [name]
    raise ToolRequestError('tool_choice must be "none", "auto", "required" or '
                           '{"type": "function", "function": {"name": ...}}')


def tool_grammar(functions: dict[str, dict[str, Any]], mode: str, names: list[str]) -> Grammar | None:
    """The reply grammar: one `<tool_call>` whose JSON is {"name": one of `names`,
    "arguments": that tool's schema}; with "auto", plain text (not starting with '<') too."""
    if mode == "none":
        return None
    call_schema = {"anyOf": [{"type": "object", "properties": {"name": {"const": n},
                                                               "arguments": functions[n]["parameters"]},
                              "required": ["name", "arguments"], "additionalProperties": False}
                             for n in names],
                   # compact JSON, one spelling: a small model otherwise spends its tokens on whitespace
                   "x-guidance": {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}}
    lines = [f'call: "{CALL_OPEN}" call_json "{CALL_CLOSE}"',
             f"call_json: %json {json.dumps(call_schema)}"]
    start = "start: call" if mode == "required" else "start: call | TEXT\nTEXT: /[^<\\s][\\s\\S]*/"
    return Grammar("\n".join([start, *lines]), "lark")


def tools_prompt(functions: dict[str, dict[str, Any]], names: list[str]) -> str:
    """The system-prompt section that describes the callable tools."""
    listing = "\n".join(json.dumps({"type": "function", "function": {"name": n, **functions[n]}}) for n in names)
    return ("# Tools\n\nYou may call a function to help with the task. Function signatures are within "
            f"<tools></tools> XML tags:\n<tools>\n{listing}\n</tools>\n\nTo call a function, reply with a JSON "
            f'object holding its name and arguments within {CALL_OPEN}{CALL_CLOSE} tags:\n'
            f'{CALL_OPEN}{{"name": <function-name>, "arguments": <args-json-object>}}{CALL_CLOSE}\n'
            "The result comes back in the next user message.")


def render_messages(messages: list[dict[str, Any]], system_extra: str) -> list[Message]:
    """OpenAI messages (with tool calls and tool results) as plain system/user/assistant
    messages in the convention the tools prompt describes."""
    out: list[Message] = []
    for m in messages:
        role = "system" if m.get("role") == "developer" else m.get("role")
        content = m.get("content") or ""
        if isinstance(content, list):
            content = "".join(p.get("text", "") for p in content if p.get("type") == "text")
        if role == "assistant" and m.get("tool_calls"):
            calls = []
            for c in m["tool_calls"]:
                fn = c.get("function", {})
                try:
                    args = json.loads(fn.get("arguments") or "{}")
                except json.JSONDecodeError:
                    args = fn.get("arguments")
                calls.append(f"{CALL_OPEN}{json.dumps({'name': fn.get('name'), 'arguments': args})}{CALL_CLOSE}")
            content = (content + "\n" if content else "") + "\n".join(calls)
        elif role == "tool":
            role, content = "user", f"<tool_response>\n{content}\n</tool_response>"
        if role not in ("system", "user", "assistant"):
            raise ToolRequestError(f"unsupported message role {m.get('role')!r}")
        out.append(Message(role=role, content=content))
    if system_extra:
        if out and out[0].role == "system":
            out[0] = Message(role="system", content=out[0].content + "\n\n" + system_extra)
        else:
            out.insert(0, Message(role="system", content=system_extra))
    # consecutive tool results (several calls in one turn) become one user message
    merged: list[Message] = []
    for m in out:
        if merged and m.role == "user" and merged[-1].role == "user" and m.content.startswith("<tool_response>") \
                and merged[-1].content.startswith("<tool_response>"):
            merged[-1] = Message(role="user", content=merged[-1].content + "\n" + m.content)
        else:
            merged.append(m)
    return merged


def parse_tool_reply(text: str) -> tuple[str, list[ToolCall]]:
    """(text outside the calls, the calls) of a reply in the `<tool_call>` convention."""
    calls = []
    for m in _CALL.finditer(text):
        try:
            body = json.loads(m.group(1))
        except json.JSONDecodeError:
            continue
        if isinstance(body, dict) and isinstance(body.get("name"), str):
            calls.append(ToolCall(name=body["name"], arguments=json.dumps(body.get("arguments", {}))))
    return _CALL.sub("", text).strip(), calls


def serve_tools(model: LocalModel, name: str, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None,
                tool_choice: Any, params: SamplingParams) -> dict[str, Any]:
    """The chat-completions answer for a request with tools (or tool messages), on `model`'s
    base or adapter `name`. Raises ToolRequestError (400) or ModelError."""
    functions = tool_functions(tools or [])
    mode, names = tool_choice_mode(functions, tool_choice)
    prompt = tools_prompt(functions, names) if mode != "none" else ""
    result = model.generate(render_messages(messages, prompt), params, model=name,
                            constraint=tool_grammar(functions, mode, names))
    c = result.completion
    text, calls = (c.text, []) if mode == "none" or result.finish_reason == "length" else parse_tool_reply(c.text)
    message: dict[str, Any] = {"role": "assistant", "content": text or None}
    if calls:
        message["tool_calls"] = [{"id": k.id, "type": "function",
                                  "function": {"name": k.name, "arguments": k.arguments}} for k in calls]
    finish = "length" if result.finish_reason == "length" else ("tool_calls" if calls else "stop")
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
        "model": name,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
        "usage": {"prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens,
                  "total_tokens": c.prompt_tokens + c.completion_tokens},
    }
