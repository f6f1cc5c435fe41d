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
from agent_core.memory import NAME_RE
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


def test_log_needs_one_to_max_ops_commands_then_done():
    one = "<|APPEND|>map.md|tree north<|END|>"
    assert LOG.matches(one + "<|DONE|>") and LOG.matches(one * 3 + "<|DONE|>")
    assert not LOG.matches("<|DONE|>")            # at least one operation
    assert not LOG.matches(one * 4 + "<|DONE|>")  # at most max_ops
    assert not LOG.matches(one)                   # DONE ends it
    assert not LOG.matches("<|APPEND|>notes.md|x<|END|><|DONE|>")  # not a memory file
    assert LOG.matches("<|CREATE|>notes.md|x<|END|><|DONE|>")     # CREATE names a new one
    assert not LOG.matches("<|CREATE|>my notes|x<|END|><|DONE|>")  # MemoryDir's name rule
    assert not LOG.matches("<|APPEND|>map.md| <|END|><|DONE|>")    # a required text is not blank
    assert not LOG.matches("<|APPEND|>map.md|a <|TAG|> b<|END|><|DONE|>")
    assert not LOG.matches("<|APPEND|>map.md|" + "x" * 161 + "<|END|><|DONE|>")  # bounded text
    assert not LOG.matches("<|UPSERT|>map.md|a:b|c<|END|><|DONE|>")  # keys have no ':'


def test_plan_reads_only_and_may_end_with_the_action_when_one_model_plays_both_roles():
    assert PLAN.matches("<|SEARCH|>wood<|END|><|DONE|>") and PLAN.matches("<|DONE|>")
    assert PLAN.matches("<|READ|>map.md|3-10<|END|><|ACTION|>Do<|END|>")
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
    """Valid by construction: whatever a constrained model writes, the parser runs it."""
    for grammar, routine in ((LOG, "log"), (PLAN, "plan"), (ACT, "act")):
        reply = data.draw(st.from_regex(grammar.text, fullmatch=True))
        parsed = parse_reply(reply)
        assert not parsed.errors, (reply, parsed.errors)
        ops = [c.op for c in parsed.commands]
        if routine == "act":
            assert ops == ["action"] and parsed.commands[0].args["name"] in CRAFTER.actions
            continue
        assert ops[-1] in ("done", "action") and "done" not in ops[:-1] and "action" not in ops[:-1]
        memory = parsed.commands[:-1]
        assert (1 if routine == "log" else 0) <= len(memory) <= (3 if routine == "log" else 2)
        for cmd in memory:
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


@pytest.mark.parametrize("change, message", [
    ({"allowed_ops": []}, "LOG must allow at least one operation"),
    ({"max_ops": 0}, "LOG must allow at least one operation"),
])
def test_a_scaffold_whose_log_grammar_cannot_be_built_fails_validation(tmp_path, change, message):
    src = Scaffold.builtin("tiny")
    dest = src.write_copy(tmp_path / "s")
    raw = yaml.safe_load((dest / "scaffold.yaml").read_text())
    raw["log"].update(change)
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
                    act_grammar(env.actions)]
        for demo in sc.config.demonstrations:
            assert any(g.matches(demo.assistant) for g in grammars), (game_dir.name, demo.assistant)
        env.close()
