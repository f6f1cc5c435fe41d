"""Tool calls: the grammar `automem serve` decodes them under (llguidance), the message
convention, and the OpenAI client against an OpenAI-shaped endpoint with and without tools."""

from __future__ import annotations

import json
import threading
import time

import pytest
from fastapi import FastAPI, Request  # module level: the endpoint's annotations must resolve
from fastapi.responses import JSONResponse

from agent_core.models.base import ModelError
from agent_core.models.tool_calls import (ChatTurn, ToolCall, ToolRequestError, parse_tool_reply, render_messages,
                                          tool_choice_mode, tool_functions, tool_grammar)
from agent_core.records import SamplingParams
from agent_core.meta.tool_specs import SqlArgs, TraceArgs

TOOLS = [{"type": "function", "function": {"name": n, "description": d, "parameters": a.model_json_schema()}}
         for n, d, a in (("sql", "run sql", SqlArgs), ("trace", "read steps", TraceArgs))]


def matcher_accepts(grammar, text: str) -> bool:
    """Whether llguidance accepts `text` as a complete sentence (byte-level tokenizer)."""
    import llguidance

    tok = llguidance.LLTokenizer(llguidance.TokenizerWrapper(_ByteTokenizer()))
    m = llguidance.LLMatcher(tok, grammar.llguidance())
    ok = m.consume_tokens(list(text.encode())) if text else True
    return bool(ok) and not m.is_error() and m.is_accepting()


class _ByteTokenizer:
    """256 byte tokens plus an end-of-sequence token: enough to run a matcher in tests."""

    eos_token_id = 256
    bos_token_id = None
    tokens = [bytes([i]) for i in range(256)] + [b"<eos>"]
    special_token_ids = [256]

    def __call__(self, text):
        return list(text.encode()) if isinstance(text, str) else list(text)


@pytest.mark.parametrize("text,mode,ok", [
    ('<tool_call>{"name": "sql", "arguments": {"query": "select 1"}}</tool_call>', "required", True),
    ('<tool_call>{"name": "trace", "arguments": {"episode": "e", "from_step": 3}}</tool_call>', "required", True),
    ('<tool_call>{"name": "trace", "arguments": {"episode": "e", "from_step": -1}}</tool_call>', "required", False),
    ('<tool_call>{"name": "sql", "arguments": {"q": "select 1"}}</tool_call>', "required", False),
    ('<tool_call>{"name": "rm", "arguments": {}}</tool_call>', "required", False),
    ("just text", "required", False),
    ('<tool_call>{\n  "name": "sql", "arguments": {"query": "x"}}</tool_call>', "required", False),
    ("just text", "auto", True),
    ('<tool_call>{"name": "sql", "arguments": {"query": "x"}}</tool_call>', "auto", True),
])
def test_grammar_holds_arguments_to_each_tools_schema(text, mode, ok):
    functions = tool_functions(TOOLS)
    grammar = tool_grammar(functions, mode, list(functions))
    grammar.check()
    assert matcher_accepts(grammar, text) is ok


def test_named_tool_choice_allows_only_that_tool():
    functions = tool_functions(TOOLS)
    mode, names = tool_choice_mode(functions, {"type": "function", "function": {"name": "trace"}})
    g = tool_grammar(functions, mode, names)
    assert matcher_accepts(g, '<tool_call>{"name": "trace", "arguments": {"episode": "e"}}</tool_call>')
    assert not matcher_accepts(g, '<tool_call>{"name": "sql", "arguments": {"query": "x"}}</tool_call>')
    assert tool_grammar(functions, *tool_choice_mode(functions, "none")) is None


@pytest.mark.parametrize("tools,choice,message", [
    ([{"type": "function"}], "auto", "each tool must be"),
    (TOOLS, {"type": "function", "function": {"name": "nope"}}, "not among the tools"),
    (TOOLS, "sometimes", "tool_choice must be"),
    ([], "required", "needs tools"),
])
def test_bad_tool_requests_say_what_is_valid(tools, choice, message):
    with pytest.raises(ToolRequestError, match=message):
        tool_choice_mode(tool_functions(tools), choice)


def test_messages_with_calls_and_results_render_in_the_call_convention():
    call = ToolCall(id="c1", name="sql", arguments='{"query": "select 1"}')
    turns = [ChatTurn(role="system", content="sys"), ChatTurn(role="user", content="go"),
             ChatTurn(role="assistant", tool_calls=[call]),
             ChatTurn(role="tool", content="x\n1", tool_call_id="c1", name="sql")]
    out = render_messages([t.openai() for t in turns], "# Tools ...")
    assert [m.role for m in out] == ["system", "user", "assistant", "user"]
    assert out[0].content == "sys\n\n# Tools ..."
    assert out[2].content == '<tool_call>{"name": "sql", "arguments": {"query": "select 1"}}</tool_call>'
    assert out[3].content == "<tool_response>\nx\n1\n</tool_response>"
    text, calls = parse_tool_reply(out[2].content)
    assert text == "" and calls[0].name == "sql" and json.loads(calls[0].arguments) == {"query": "select 1"}


@pytest.fixture()
def fake_endpoint():
    """An OpenAI-shaped endpoint (not our server): answers one tool call, or, for model
    'plain', refuses tools the way vLLM does without --enable-auto-tool-choice."""
    import uvicorn


    app = FastAPI()
    seen = []

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        seen.append(body)
        if body["model"] == "plain":
            return JSONResponse({"error": {"message": '"auto" tool choice requires --enable-auto-tool-choice and '
                                           "--tool-call-parser to be set", "type": "BadRequestError", "code": 400}},
                                status_code=400)
        return {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                    "role": "assistant", "content": None, "tool_calls": [
                        {"id": "call_9", "type": "function",
                         "function": {"name": "sql", "arguments": '{"query": "select 2"}'}}]}}],
                "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}}

    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", seen
    server.should_exit = True
    thread.join(timeout=10)


def test_openai_client_sends_tools_and_returns_typed_calls(fake_endpoint):
    from agent_core.models.openai_client import OpenAIChatModel

    url, seen = fake_endpoint
    model = OpenAIChatModel(url, "m", max_retries=0)
    turns = [ChatTurn(role="user", content="go"),
             ChatTurn(role="assistant", tool_calls=[ToolCall(id="c1", name="sql", arguments="{}")]),
             ChatTurn(role="tool", content="r", tool_call_id="c1")]
    out = model.complete_tools(turns, SamplingParams(max_tokens=50), TOOLS, "required")
    assert out.tool_calls == [ToolCall(id="call_9", name="sql", arguments='{"query": "select 2"}')]
    assert (out.prompt_tokens, out.completion_tokens) == (11, 7) and out.finish_reason in ("stop", "tool_calls")
    sent = seen[-1]
    assert sent["tools"] == TOOLS and sent["tool_choice"] == "required"
    assert sent["messages"][1]["tool_calls"][0]["function"]["name"] == "sql"
    assert sent["messages"][2] == {"role": "tool", "content": "r", "tool_call_id": "c1"}
    with pytest.raises(ModelError, match="single-call reviewer"):
        OpenAIChatModel(url, "plain", max_retries=0).complete_tools(turns, SamplingParams(), TOOLS)
