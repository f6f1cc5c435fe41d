"""The tagged command protocol: forgiving about form, never guessing, robust to any input."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent_core.commands import (CORRECTION_HINT, MAX_ERRORS, NO_COMMAND, OPS, Command, ParseResult,
                                 format_command, parse_reply)
from agent_core.memory import MemoryDir


def ops_of(text: str) -> list[tuple[str, dict[str, str]]]:
    return [(c.op, c.args) for c in parse_reply(text).commands]


# ---------------------------------------------------------------- the happy path
def test_every_op_parses_with_named_args() -> None:
    reply = ("I will log this.\n<|CREATE|>a.md|first<|END|>\n<|APPEND|>a.md|saw a tree<|END|>"
             "<|REWRITE|>a.md|all new<|END|><|REPLACE|>a.md|all|some<|END|><|UPSERT|>map.md|3,4|tree<|END|>"
             "<|READ|>a.md<|END|><|READ|>a.md|3-10<|END|><|TAIL|>a.md<|END|><|TAIL|>a.md|5<|END|>"
             "<|SEARCH|>tree<|END|><|LIST|><|END|><|DELETE|>a.md<|END|><|ACTION|>move_left<|END|><|DONE|>")
    r = parse_reply(reply)
    assert r.errors == [] and r.error_count == 0
    assert [(c.op, c.args) for c in r.commands] == [
        ("create", {"file": "a.md", "text": "first"}), ("append", {"file": "a.md", "text": "saw a tree"}),
        ("rewrite", {"file": "a.md", "text": "all new"}), ("replace", {"file": "a.md", "old": "all", "new": "some"}),
        ("upsert", {"file": "map.md", "key": "3,4", "value": "tree"}), ("read", {"file": "a.md"}),
        ("read", {"file": "a.md", "lines": "3-10"}), ("tail", {"file": "a.md"}), ("tail", {"file": "a.md", "n": "5"}),
        ("search", {"query": "tree"}), ("list", {}), ("delete", {"file": "a.md"}), ("action", {"name": "move_left"}),
        ("done", {})]
    assert r.commands[1].raw == "<|APPEND|>a.md|saw a tree<|END|>"
    assert r.commands[-1].raw == "<|DONE|>"


def test_last_argument_keeps_pipes_and_inner_whitespace() -> None:
    (op, args), = ops_of("<|APPEND|>  notes.md | a | b\n  c  \n<|END|>")
    assert args == {"file": "notes.md", "text": "a | b\n  c"}
    assert ops_of("<|REPLACE|>f|x|y|z<|END|>") == [("replace", {"file": "f", "old": "x", "new": "y|z"})]
    assert ops_of("<|SEARCH|>a|b<|END|>") == [("search", {"query": "a|b"})]


def test_forgiving_about_form() -> None:
    assert ops_of("<|append|>f|t<|end|><| Done |>") == [("append", {"file": "f", "text": "t"}), ("done", {})]
    assert ops_of("prose <|ReAd|> f <|EnD|> more prose") == [("read", {"file": "f"})]
    # a missing END at the very end of the reply is accepted (the rest is the argument)
    assert ops_of("<|APPEND|>f|last words\n") == [("append", {"file": "f", "text": "last words"})]
    # DONE needs no END; a stray END is ignored
    r = parse_reply("<|DONE|><|END|>")
    assert ops_of("<|DONE|><|END|>") == [("done", {})] and r.errors == []
    assert parse_reply(b"<|LIST|><|END|>").commands[0].op == "list"  # type: ignore[arg-type]


# ---------------------------------------------------------------- never guesses
@pytest.mark.parametrize("reply, fragment", [
    ("", "could not parse reply"),
    ("I think I should append something", "could not parse reply"),
    ("APPEND notes.md|text", "could not parse reply"),
    ("<|WRITE|>f|t<|END|>", "unknown op"),
    ("<|APPEND|>f<|END|>", "APPEND needs 2 arguments"),
    ("<|REPLACE|>f|old<|END|>", "REPLACE needs 3 arguments"),
    ("<|READ|><|END|>", "file is empty"),
    ("<|UPSERT|>f| |v<|END|>", "key is empty"),
    ("<|LIST|>everything<|END|>", "LIST takes no arguments"),
    ("<|ACTION|><|END|>", "name is empty"),
    ("<|APPEND|>f|t<|/APPEND|>", "close commands with <|END|>"),
    ("<|/END|>", "is not a command"),
])
def test_errors_one_line_each(reply: str, fragment: str) -> None:
    r = parse_reply(reply)
    assert r.commands == [] and len(r.errors) == 1 == r.error_count
    assert fragment in r.errors[0] and "\n" not in r.errors[0]


def test_unclosed_command_before_next_tag_is_not_run() -> None:
    r = parse_reply("<|APPEND|>f|half<|READ|>f<|END|><|APPEND|>g|x<|DONE|>")
    assert [(c.op, c.args) for c in r.commands] == [("read", {"file": "f"}), ("done", {})]
    assert len(r.errors) == 2 and all("unclosed <|APPEND|>" in e for e in r.errors)


def test_nested_tags() -> None:
    r = parse_reply("<|APPEND|>f|<|APPEND|>g|inner<|END|> tail<|END|>")
    assert ops_of("<|APPEND|>f|<|APPEND|>g|inner<|END|> tail<|END|>") == [("append", {"file": "g", "text": "inner"})]
    assert r.error_count == 1


def test_no_command_message_and_hint() -> None:
    assert NO_COMMAND.startswith("could not parse reply: expected commands like <|APPEND|>file|text<|END|>")
    assert "\n" not in CORRECTION_HINT and "<|DONE|>" in CORRECTION_HINT
    assert parse_reply("<|FOO|>").errors[0].startswith("unknown op")  # no extra no-command error


def test_errors_are_capped_but_counted() -> None:
    r = parse_reply("<|nope|>" * 1_000)
    assert r.error_count == 1_000 and len(r.errors) == MAX_ERRORS + 1
    assert "980 more errors" in r.errors[-1]


def test_ops_table() -> None:
    assert {n for n, s in OPS.items() if s.read_only} == {"read", "tail", "search", "list"}
    assert {n for n, s in OPS.items() if s.memory} == {"create", "append", "rewrite", "replace", "upsert", "read",
                                                       "tail", "search", "list", "delete"}
    assert OPS["read"].usage == "<|READ|>file[|start-end]<|END|>" and OPS["done"].usage == "<|DONE|>"


# ---------------------------------------------------------------- format_command
def test_format_command() -> None:
    assert format_command("append", file="a.md", text="x | y") == "<|APPEND|>a.md|x | y<|END|>"
    assert format_command("LIST") == "<|LIST|><|END|>"
    assert format_command("done") == "<|DONE|>"
    assert format_command("read", file="a.md", lines="3-10") == "<|READ|>a.md|3-10<|END|>"
    for op, args in (("nope", {}), ("append", {"file": "a"}), ("append", {"file": "a", "text": "t", "x": "1"}),
                     ("replace", {"file": "a", "old": "x|y", "new": "z"}), ("append", {"file": " a", "text": "t"}),
                     ("append", {"file": "a", "text": "<|END|>"}), ("append", {"file": "a<", "text": "END|>"}),
                     ("read", {"file": "a", "lines": "1-2", "extra": "3"}), ("tail", {"n": "3"}),
                     ("action", {"name": ""})):
        with pytest.raises(ValueError):
            format_command(op, **args)


def test_memory_agrees_with_the_protocol(tmp_path: Path) -> None:
    """Every memory op, written with format_command and parsed back, runs on a real MemoryDir."""
    mem = MemoryDir(tmp_path / "mem")
    script = [format_command("create", file="a.md", text="alpha"), format_command("append", file="a.md", text="beta"),
              format_command("upsert", file="k.md", key="3,4", value="tree"),
              format_command("replace", file="a.md", old="alpha", new="gamma"),
              format_command("read", file="a.md", lines="1-2"), format_command("read", file="a.md"),
              format_command("tail", file="a.md", n="1"), format_command("tail", file="a.md"),
              format_command("search", query="TREE"), format_command("list"),
              format_command("rewrite", file="k.md", text="x"), format_command("delete", file="k.md")]
    r = parse_reply("\n".join(script))
    assert r.errors == [] and len(r.commands) == len(script) == len([o for o in OPS if OPS[o].memory]) + 2
    results = [mem.apply(c.op, c.args) for c in r.commands]
    assert all(res.ok for res in results), [res.text for res in results if not res.ok]
    assert results[4].text.splitlines()[1:] == ["1: gamma", "2: beta"]
    assert results[8].text.splitlines()[1] == "k.md:1: 3,4: tree"
    assert mem.files() == {"a.md": "gamma\nbeta\n"}


# ---------------------------------------------------------------- robustness (property tests)
FRAGMENTS = ["<|", "|>", "|", "<", ">", "END", "APPEND", "done", "/", " ", "\n", "\x00", "x", "<|END|>", "<|APPEND|>",
             "<|DONE|>", "<|READ|>", "<| list |>", "<|/APPEND|>", "<|<|", "é", "🦀"]


def check_result(text: str, r: ParseResult) -> None:
    assert isinstance(r, ParseResult)
    assert all(isinstance(e, str) and e and "\n" not in e for e in r.errors)
    assert len(r.errors) <= MAX_ERRORS + 1 and r.error_count >= len(r.errors)
    assert r.commands or r.errors
    for c in r.commands:
        spec = OPS[c.op]
        assert c.raw in text and set(c.args) <= set(spec.args) and len(c.args) >= spec.required
        assert all(isinstance(v, str) and v == v.strip() for v in c.args.values())


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_never_raises_on_any_text(text: str) -> None:
    check_result(text, parse_reply(text))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(FRAGMENTS), max_size=40).map("".join))
def test_never_raises_on_tag_soup(text: str) -> None:
    check_result(text, parse_reply(text))


arg_text = st.text(max_size=30)


@settings(max_examples=300, deadline=None)
@given(op=st.sampled_from(sorted(OPS)), values=st.lists(arg_text, max_size=3))
def test_format_round_trips_or_refuses(op: str, values: list[str]) -> None:
    spec = OPS[op]
    args = dict(zip(spec.args, values))
    try:
        raw = format_command(op, **args)
    except ValueError:
        return
    assert parse_reply(raw) == ParseResult([Command(op, args, raw)], [], 0)
    assert parse_reply(f"prose {raw.lower() if not args else raw} prose<|DONE|>").commands[0].op == op


clean = st.text(alphabet=st.characters(blacklist_characters="<|", blacklist_categories=("Cs",)),
                min_size=1, max_size=30).map(str.strip).filter(bool)


@settings(max_examples=300, deadline=None)
@given(op=st.sampled_from(sorted(OPS)), values=st.lists(clean, min_size=3, max_size=3), last=arg_text)
def test_format_round_trips_clean_arguments(op: str, values: list[str], last: str) -> None:
    spec = OPS[op]
    args = dict(zip(spec.args, values))
    if spec.args and "<" not in last and "|" not in last:
        args[spec.args[-1]] = last.strip() or "x"
    raw = format_command(op, **args)  # must not refuse
    assert parse_reply(raw).commands == [Command(op, args, raw)]


def test_megabyte_inputs() -> None:
    rng = random.Random(0)
    junk = bytes(rng.getrandbits(8) for _ in range(1 << 20))
    soup = "".join(rng.choice(FRAGMENTS) for _ in range(300_000))
    for text in (junk.decode("latin-1"), junk.decode("utf-8", "replace"), soup, "<|APPEND|>f|" + "<|" * 500_000,
                 "<|" + " " * 1_000_000, "<|APPEND|>" * 100_000, "x" * (1 << 20) + "<|DONE|>"):
        r = parse_reply(text)
        check_result(text, r)
    assert parse_reply(junk).errors  # type: ignore[arg-type]
    big = parse_reply("<|APPEND|>f|" + "y" * (1 << 20) + "<|END|>").commands[0]
    assert len(big.args["text"]) == 1 << 20


def test_op_lists_derive_from_the_one_op_table(tmp_path):
    from agent_core.agent import COMMAND_HELP
    from agent_core.commands import OPS, parse_reply
    from agent_core.memory import MemoryDir
    from agent_core.commands import MEMORY_OPS, READ_OPS, WRITE_OPS

    memory_ops = [n for n, s in OPS.items() if s.memory]
    assert sorted(MEMORY_OPS) == sorted(memory_ops) and set(READ_OPS) | set(WRITE_OPS) == set(memory_ops)
    assert [parse_reply(h).commands[0].op for h in COMMAND_HELP] == memory_ops  # help for every op
    mem = MemoryDir(tmp_path)
    for name in memory_ops:  # memory runs every op of the table (a refusal text is fine, not "unknown")
        assert "unknown memory operation" not in mem.apply(name, {}).text
    assert "unknown memory operation" in mem.apply("fly", {}).text
