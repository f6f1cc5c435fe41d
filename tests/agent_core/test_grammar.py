"""Reply grammars: built from the op table, the scaffold and the game; every sentence they
allow parses cleanly (valid by construction); what cannot be built fails scaffold
validation."""

from __future__ import annotations

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent_core.commands import OPS, parse_reply
from agent_core.grammar import (Grammar, GrammarError, act_grammar, command_pattern, log_grammar,
                                plan_grammar)
from agent_core.memory_input import NAME_RE
from agent_core.scaffold import BUILTIN_DIR, Scaffold, ScaffoldError
from environments import make_env

CRAFTER = make_env("crafter", max_steps=5)
FILES = ["map.md", "progress.md"]
LOG = log_grammar(["append", "upsert", "replace", "read", "tail", "search", "list", "create", "delete"], 3, FILES)
PLAN = plan_grammar(["read", "tail", "search", "list"], 2, CRAFTER.actions, FILES)
ACT = act_grammar(CRAFTER.actions)


def test_act_is_exactly_one_action_spelled_as_the_game_spells_it():
    assert ACT.matches("<|ACTION|>Move West<|END|>")
    for bad in ("<|ACTION|>move west<|END|>", "<|ACTION|>Move West <|END|>", "<|ACTION|>Fly<|END|>",
                "<|ACTION|>Do<|END|><|DONE|>", "<|ACTION|>Do", " <|ACTION|>Do<|END|>"):
        assert not ACT.matches(bad), bad


def test_a_log_turn_is_writes_then_done_or_a_look_up_group_that_ends_the_reply():
    one = "<|APPEND|>map.md|tree north<|END|>"
    look = "<|SEARCH|>tree<|END|>"
    assert LOG.matches("<|DONE|>") and LOG.matches(one + "<|DONE|>") and LOG.matches(one * 3 + "<|DONE|>")
    assert LOG.matches(look) and LOG.matches(one + look) and LOG.matches(one * 2 + look)
    assert LOG.matches(look + "<|READ|>map.md|1-5<|END|>" + "<|LIST|><|END|>")  # a group, <= max_ops
    assert not LOG.matches(look + "<|DONE|>")     # the look-up ended the reply
    assert not LOG.matches(look + one)            # no write after a look-up in the same reply
    assert not LOG.matches(one * 3 + look)        # at most max_ops operations in all
    assert not LOG.matches(one * 4 + "<|DONE|>")
    assert not LOG.matches(one)                   # DONE or a look-up ends it
    assert not LOG.matches("<|APPEND|>notes.md|x<|END|><|DONE|>")  # not a memory file
    assert LOG.matches("<|CREATE|>notes.md|x<|END|><|DONE|>")     # CREATE names a new one
    assert not LOG.matches("<|CREATE|>my notes|x<|END|><|DONE|>")  # MemoryDir's name rule
    assert not LOG.matches("<|APPEND|>map.md| <|END|><|DONE|>")    # a required text is not blank
    assert not LOG.matches("<|APPEND|>map.md|a <|TAG|> b<|END|><|DONE|>")
    assert not LOG.matches("<|APPEND|>map.md|" + "x" * 161 + "<|END|><|DONE|>")  # bounded text
    assert not LOG.matches("<|UPSERT|>map.md|a:b|c<|END|><|DONE|>")  # keys have no ':'


def test_the_last_turn_and_no_ops_left_leave_only_the_endings():
    ops = ["append", "read", "search"]
    last = log_grammar(ops, 3, FILES, last_turn=True)
    assert last.matches("<|APPEND|>map.md|x<|END|><|DONE|>") and last.matches("<|DONE|>")
    assert not last.matches("<|SEARCH|>x<|END|>") and not last.matches("<|APPEND|>map.md|x<|END|><|SEARCH|>x<|END|>")
    assert log_grammar(ops, 0, FILES).text == "<\\|DONE\\|>"
    assert plan_grammar(["search"], 2, ["Do"], FILES, last_turn=True).matches("<|ACTION|>Do<|END|>")
    assert not plan_grammar(["search"], 2, ["Do"], FILES, last_turn=True).matches("<|SEARCH|>x<|END|>")
    assert not plan_grammar(["search"], 0, ["Do"], FILES).matches("<|SEARCH|>x<|END|>")


def test_consult_first_makes_the_log_turn_look_ups_only():
    ops = ["append", "read", "search"]
    first = log_grammar(ops, 3, FILES, consult_first=True)
    assert first.matches("<|SEARCH|>wood<|END|>") and first.matches("<|SEARCH|>a<|END|><|READ|>map.md<|END|>")
    assert not first.matches("<|DONE|>") and not first.matches("<|APPEND|>map.md|x<|END|><|DONE|>")
    assert log_grammar(ops, 3, FILES, consult_first=True, last_turn=True).matches("<|DONE|>")
    assert not log_grammar(ops, 3, FILES, consult_first=True, last_turn=True).matches("<|SEARCH|>a<|END|>")
    with pytest.raises(GrammarError, match="no write could ever run"):
        log_grammar(["append", "list"], 3, consult_first=True)


def test_texts_hold_nethack_map_rows_but_never_a_tag():
    row = "|..<..|"
    for reply in (f"<|APPEND|>map.md|{row}<|END|><|DONE|>", f"<|SEARCH|>{row}<|END|>",
                  f"<|UPSERT|>map.md|stairs|{row} up <<|END|><|DONE|>",
                  f"<|REPLACE|>map.md|a <b|{row}<|END|><|DONE|>"):
        assert LOG.matches(reply), reply
        parsed = parse_reply(reply)
        assert not parsed.errors, (reply, parsed.errors)
    assert parse_reply(f"<|APPEND|>map.md|{row}<|END|><|DONE|>").commands[0].args["text"] == row
    # '|' in a non-final argument is the separator: old 'a', new 'b|c'
    assert parse_reply("<|REPLACE|>map.md|a|b|c<|END|>").commands[0].args == {"file": "map.md", "old": "a", "new": "b|c"}
    for bad in ("<|APPEND|>map.md|a<|b<|END|><|DONE|>",        # '<|' starts a tag
                "<|REPLACE|>map.md|a<|b<|END|><|DONE|>",
                "<|UPSERT|>map.md|k<|v<|END|><|DONE|>"):        # a key does not end in '<'
        assert not LOG.matches(bad), bad


def test_plan_reads_only_and_may_end_with_the_action_when_one_model_plays_both_roles():
    assert PLAN.matches("<|SEARCH|>wood<|END|>") and PLAN.matches("<|DONE|>")
    assert PLAN.matches("<|READ|>map.md|3-10<|END|><|TAIL|>map.md<|END|>")
    assert PLAN.matches("<|ACTION|>Do<|END|>")
    assert not PLAN.matches("<|READ|>map.md|3-10<|END|><|ACTION|>Do<|END|>")  # the look-up ends it
    assert not PLAN.matches("<|SEARCH|>wood<|END|><|DONE|>")
    assert not PLAN.matches("<|APPEND|>map.md|x<|END|><|DONE|>")
    two_models = plan_grammar(["search"], 2, None, FILES)
    assert not two_models.matches("<|ACTION|>Do<|END|>") and two_models.matches("<|DONE|>")
    with pytest.raises(GrammarError, match="only read"):
        plan_grammar(["append"], 2)


def test_every_op_of_the_table_has_a_pattern_and_a_canonical_command_matches_it():
    import re

    from agent_core.commands import format_command

    samples = {"file": "map.md", "text": "a tree", "old": "a", "new": "b", "key": "wood", "value": "2",
               "lines": "3-10", "n": "5", "query": "tree", "name": "Do"}
    for name, spec in OPS.items():
        pattern = command_pattern(spec) if spec.memory else None
        if pattern is None:
            continue
        full = format_command(name, **{a: samples[a] for a in spec.args})
        assert re.fullmatch(pattern, full, re.DOTALL), (name, full)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_any_reply_the_grammars_allow_parses_without_error(data):
    """Valid by construction: whatever a constrained model writes, the parser runs it, and a
    reply is writes then DONE / the action, or writes then a group of look-ups."""
    for grammar, routine in ((LOG, "log"), (PLAN, "plan"), (ACT, "act")):
        reply = data.draw(st.from_regex(grammar.text, fullmatch=True))
        parsed = parse_reply(reply)
        assert not parsed.errors, (reply, parsed.errors)
        ops = [c.op for c in parsed.commands]
        if routine == "act":
            assert ops == ["action"] and parsed.commands[0].args["name"] in CRAFTER.actions
            continue
        assert "done" not in ops[:-1] and "action" not in ops[:-1]
        memory = parsed.commands[:-1] if ops[-1] in ("done", "action") else parsed.commands
        kinds = ["look" if OPS[c.op].read_only else "write" for c in memory]
        if ops[-1] not in ("done", "action"):  # ended by a look-up group
            assert kinds and kinds[-1] == "look"
        assert kinds == sorted(kinds, key=lambda k: k == "look"), kinds  # writes, then look-ups
        assert len(memory) <= (3 if routine == "log" else 2)
        for cmd in memory:
            assert all("<|" not in v for v in cmd.args.values())
            if "file" in cmd.args:
                assert NAME_RE.fullmatch(cmd.args["file"])
                assert cmd.op == "create" or cmd.args["file"] in FILES
            if routine == "plan":
                assert OPS[cmd.op].read_only


def test_grammars_compile_in_the_engine_for_every_game():
    for game in ("crafter", "minihack", "nethack", "tiny"):
        env = make_env(game)
        cfg = Scaffold.builtin(game).config
        for g in (act_grammar(env.actions), log_grammar(cfg.log.allowed_ops, cfg.log.max_ops, FILES),
                  plan_grammar(cfg.plan.allowed_ops, cfg.plan.max_ops, env.actions)):
            g.check()
        env.close()
    with pytest.raises(GrammarError, match="does not compile"):
        Grammar("(unclosed").check()


def test_digest_names_the_text_and_kind():
    assert ACT.digest == act_grammar(list(CRAFTER.actions)).digest
    assert ACT.digest != act_grammar(CRAFTER.actions[:-1]).digest
    assert Grammar("a").digest != Grammar("a", "lark").digest


def test_request_field_is_vllms_current_one_and_the_server_reads_it_back():
    assert ACT.request_field() == {"regex": ACT.text}
    assert Grammar.from_request({"regex": ACT.text}) == ACT
    assert Grammar.from_request({"grammar": "start: \"a\""}).kind == "lark"
    assert Grammar.from_request({"choice": ["a|b", "c"]}).matches("a|b")
    for bad in ({}, {"regex": "a", "choice": ["b"]}, {"json": {"type": "object"}}, {"regex": 3}):
        with pytest.raises(ValueError, match="structured_outputs"):
            Grammar.from_request(bad)


@pytest.mark.parametrize("routine, change, message", [
    ("log", {"allowed_ops": []}, "LOG must allow at least one operation"),
    ("log", {"consult_before_write": True, "max_turns": 1}, "no write could ever run"),
    ("log", {"consult_before_write": True, "max_ops": 1}, "no write could ever run"),
    ("log", {"consult_before_write": True, "allowed_ops": ["append", "list"]}, "no write could ever run"),
    ("plan", {"max_turns": 1}, "plan.max_turns >= 2"),
    ("plan", {"max_ops": 0}, "plan.max_ops >= 1"),
])
def test_a_scaffold_whose_routines_have_no_legal_reply_fails_validation(tmp_path, routine, change, message):
    src = Scaffold.builtin("tiny")
    dest = src.write_copy(tmp_path / "s")
    raw = yaml.safe_load((dest / "scaffold.yaml").read_text())
    raw[routine].update(change)
    (dest / "scaffold.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ScaffoldError, match=message):
        Scaffold(dest)


def test_builtin_demonstrations_are_sentences_of_the_grammars():
    """The few-shot turns teach exactly the form decoding enforces."""
    for game_dir in sorted(p for p in BUILTIN_DIR.iterdir() if p.is_dir() and p.name != "baseline"):
        sc = Scaffold.builtin(game_dir.name)
        env = make_env(game_dir.name)
        files = [f.name for f in sc.config.memory_files]
        grammars = [log_grammar(sc.config.log.allowed_ops, sc.config.log.max_ops, files),
                    plan_grammar(sc.config.plan.allowed_ops, sc.config.plan.max_ops, env.actions, files),
                    plan_grammar(sc.config.plan.allowed_ops, 0, env.actions, files),
                    act_grammar(env.actions)]
        for demo in sc.config.demonstrations:
            assert any(g.matches(demo.assistant) for g in grammars), (game_dir.name, demo.assistant)
        env.close()
