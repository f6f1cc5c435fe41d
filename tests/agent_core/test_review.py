"""Outer loop 1 in the core: bundle, reviewers, candidate validation."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from agent_core.models.base import Roles
from agent_core.diagnostics import diagnose, kept_passage
from agent_core.episode import run_episode
from agent_core.models.config import RoutineScript
from agent_core.models.scripted import ScriptedModel
from agent_core.review.bundle import build_bundle
from agent_core.review.candidate import (CandidateError, Revision, format_revision, parse_revision,
                                         validate_candidate)
from agent_core.review.propose import propose
from agent_core.review.candidate import NoRevision
from agent_core.review.reviewers import MetaLLMReviewer, RuleBasedReviewer, worked_step
from agent_core.scaffold import Scaffold
from agent_core.trace import read_trace
from environments import make_env

# The planted problem: every step appends the same note to map.md (unbounded, duplicate
# growth), next to a keyed upsert that stays put.
GROWING = RoutineScript(log="<|APPEND|>map.md|visited the hall again<|END|>"
                            "<|UPSERT|>map.md|hall|exits north, east<|END|><|SEARCH|>hall<|END|>", plan="<|DONE|>")


def play(scaffold: Scaffold, root: Path, script=GROWING, seeds=(0, 1, 2), steps=8) -> list[str]:
    return [run_episode(make_env("tiny"), scaffold, Roles(memory=ScriptedModel(script.reply)), seed, steps,
                        root / str(seed)).trace_path for seed in seeds]


def mean_growth(traces):
    return sum(diagnose(read_trace(t)).growth_chars_per_step for t in traces) / len(traces)


@pytest.fixture(scope="module")
def incumbent_traces(tmp_path_factory):
    return play(Scaffold.builtin("tiny"), tmp_path_factory.mktemp("inc"))


def test_bundle_is_deterministic_and_fits_budget(incumbent_traces):
    inc = Scaffold.builtin("tiny")
    a = build_bundle(inc, incumbent_traces, token_budget=2000)
    b = build_bundle(inc, list(reversed(incumbent_traces)), token_budget=2000)
    assert a.render() == b.render()
    assert len(a.render()) <= 2000 * 4 + 2000  # excerpts fill what is left of the budget, no more
    assert a.excerpts and "map.md" in a.render() and "visited the hall again" in a.render()
    usage = {f.name: f for f in a.episodes[0].files}
    assert usage["map.md"].writes == 16 and usage["map.md"].duplicate_writes >= 7


def test_rule_based_reviewer_fixes_unbounded_growth(tmp_path, incumbent_traces):
    inc = Scaffold.builtin("tiny")
    reply = RuleBasedReviewer().review(build_bundle(inc, incumbent_traces), inc, [])
    revision = parse_revision(reply)
    assert any("map.md: append-log -> keyed-table" in c for c in revision.changes)
    assert "grows" in revision.analysis
    candidate = validate_candidate(revision, inc, tmp_path / "store")
    spec = {f.name: f.kind for f in candidate.config.memory_files}
    assert spec["map.md"] == "keyed-table"
    after = play(candidate, tmp_path / "cand")
    assert mean_growth(after) < mean_growth(incumbent_traces) / 4


def test_rule_based_remedies_for_each_problem(tmp_path):
    inc = Scaffold.builtin("tiny")
    blind = RoutineScript(log="<|APPEND|>progress.md|a<|END|><|APPEND|>strategy.md|b<|END|>"
                              "<|APPEND|>action_log.md|c<|END|><|DONE|>", plan="<|READ|>progress.md<|END|><|DONE|>")
    rev = parse_revision(RuleBasedReviewer().review(build_bundle(inc, play(inc, tmp_path / "b", blind)), inc, []))
    assert any("consult_before_write" in c for c in rev.changes)
    assert any("dropped unread files" in c and "action_log.md" in c for c in rev.changes)
    junk = RoutineScript(log="<|APPEND|>../x|a<|END|><|READ|>nope.md<|END|><|DONE|>", plan="<|SEARCH|>a<|END|><|DONE|>")
    rev = parse_revision(RuleBasedReviewer().review(build_bundle(inc, play(inc, tmp_path / "j", junk)), inc, []))
    assert any("max_ops" in c for c in rev.changes)
    # an agent that writes down what it saw once (step 0's "You wake up in the house.") and reads
    calm = RoutineScript(log="<|APPEND|>progress.md|You wake up in the house<|END|><|READ|>action_log.md<|END|>",
                         plan="<|READ|>map.md<|END|><|READ|>progress.md<|END|><|READ|>strategy.md<|END|><|DONE|>")
    with pytest.raises(NoRevision):  # (its log repeats the line: growth thresholds raised)
        RuleBasedReviewer(write_search_ratio=10, growth_chars_per_step=100, duplicate_share=1).review(
            build_bundle(inc, play(inc, tmp_path / "c", calm, steps=3)), inc, [])


def test_a_scaffold_whose_agent_keeps_nothing_gets_a_worked_step(tmp_path):
    inc = Scaffold.builtin("tiny")
    forgetful = RoutineScript(log="<|READ|>action_log.md<|END|><|APPEND|>progress.md|looked around<|END|><|DONE|>",
                              plan="<|READ|>map.md<|END|><|READ|>progress.md<|END|><|READ|>strategy.md<|END|>"
                                   "<|DONE|>")
    traces = play(inc, tmp_path / "f", forgetful, steps=3)
    assert all(diagnose(read_trace(t)).kept_passages == 0 for t in traces)
    rev = parse_revision(RuleBasedReviewer(write_search_ratio=10).review(build_bundle(inc, traces), inc, []))
    assert [c for c in rev.changes if "worked step" in c or "notes.md" in c] == rev.changes
    assert "what is said once is lost" in rev.analysis
    candidate = validate_candidate(rev, inc, tmp_path / "store")
    assert "notes.md" in {f.name for f in candidate.config.memory_files}
    demos = candidate.config.demonstrations
    assert demos[0].assistant == "<|APPEND|>notes.md|the key is under the third stone<|END|><|DONE|>"
    assert demos[1].assistant == "<|READ|>notes.md<|END|>" and "1: the key is under the third stone" in demos[2].user
    # the worked step is a write the diagnostics credit: it copies a passage seen once
    assert kept_passage("the key is under the third stone", demos[0].user, [demos[1].user])
    # the example obeys the scaffold: with consult_before_write it looks up first
    assert worked_step(True)[0]["assistant"].startswith("<|SEARCH|>")
    # it runs: the candidate plays, and a scaffold that already has demonstrations is left alone
    play(candidate, tmp_path / "cand", forgetful, seeds=(0,), steps=2)
    with pytest.raises(NoRevision):
        RuleBasedReviewer(write_search_ratio=10).review(build_bundle(candidate, traces), candidate, [])


def good_revision(inc: Scaffold, **edit) -> Revision:
    files = {k: v.decode() for k, v in inc.files.items()}
    cfg = yaml.safe_load(files["scaffold.yaml"])
    cfg["history_window"] = 3
    cfg.update(edit)
    files["scaffold.yaml"] = yaml.safe_dump(cfg)
    return Revision(analysis="short history hides earlier rooms", changes=["history_window 2 -> 3"], files=files)


@pytest.mark.parametrize("mutate, reason", [
    (lambda t: t[: len(t) // 2], "truncated"),
    (lambda t: "Sure! " + t, "outside the blocks"),
    (lambda t: "no tags at all", "missing <analysis>"),
    (lambda t: t.replace('path="prompts/plan.jinja"', 'path="../plan.jinja"'), "outside the scaffold"),
    (lambda t: t.replace('path="prompts/act.jinja"', 'path="prompts/other.jinja"'), "missing files"),
    (lambda t: t.replace('path="hooks.py"', 'path="/etc/hooks.py"'), "outside the scaffold"),
])
def test_malformed_replies_are_rejected_with_reason(mutate, reason):
    inc = Scaffold.builtin("tiny")
    rev = good_revision(inc)
    rev.files["hooks.py"] = "def validate_write(op, args, files):\n    return None\n"
    with pytest.raises(CandidateError, match=reason):
        parse_revision(mutate(format_revision(rev)))


@pytest.mark.parametrize("edit, reason", [
    (dict(default_action="go north"), "default_action"),
    (dict(model={"max_tokens": 999, "temperature": 0.0}), "model"),
    (dict(history_window=2), "no structural change"),
])
def test_constraints(tmp_path, edit, reason):
    inc = Scaffold.builtin("tiny")
    with pytest.raises(CandidateError, match=reason):
        validate_candidate(good_revision(inc, **edit), inc, tmp_path / "store")
    assert not (tmp_path / "store").exists()  # nothing written for a rejected candidate


def test_act_prompt_is_world_action_behaviour(tmp_path):
    inc = Scaffold.builtin("tiny")
    rev = good_revision(inc)
    rev.files["prompts/act.jinja"] = "Pick anything."
    with pytest.raises(CandidateError, match="act.jinja"):
        validate_candidate(rev, inc, tmp_path / "store")


@pytest.mark.parametrize("hooks, reason", [
    ("def postprocess_observation(text):\n    while True:\n        pass\n", "within"),
    ("def postprocess_observation(text):\n    x = []\n    while True:\n        x.append('y' * 10**6)\n", "memory|within"),
    ("def validate_write(op, args, files):\n    open('/tmp/evil', 'w').write('x')\n", "may not use 'open'"),
    ("import os\ndef validate_write(op, args, files):\n    os.remove('x')\n", "may import only"),
    ("def validate_write(op, args, files):\n    return ().__class__.__base__\n", 'starts with "_"'),
    ("def write_memory(files):\n    return files\n", "none of the hooks"),
    ("def validate_write(op, args, files):\n    return 42\n", "None or a refusal"),
    ("def postprocess_observation(text)\n    return text\n", "syntax"),
    # modules reached through an allowed module
    ("import typing\ndef validate_write(op, args, files):\n    typing.sys.modules['os'].remove('x')\n",
     "may not use typing.sys"),
    ("import typing as t\ndef postprocess_observation(text):\n    return t.sys.modules\n", "may not use typing.sys"),
    ("from typing import sys\ndef postprocess_observation(text):\n    return sys\n", "may not import typing.sys"),
    ("import collections\ndef postprocess_observation(text):\n    return collections.abc.sys\n",
     "may not use collections.abc.sys"),
    ("import re\ndef postprocess_observation(text):\n    return re._compile\n", 'starts with "_"'),
])
def test_bad_hook_code_is_rejected(tmp_path, hooks, reason):
    inc = Scaffold.builtin("tiny")
    rev = good_revision(inc)
    rev.files["hooks.py"] = hooks
    with pytest.raises(CandidateError, match=reason):
        validate_candidate(rev, inc, tmp_path / "store")
    assert not Path("/tmp/evil").exists() and not (tmp_path / "store").exists()


def test_allowed_module_apis_stay_usable():
    from agent_core.review.candidate import check_hook_source

    check_hook_source("import re\nimport collections.abc\nfrom typing import Any\nimport json as j\n"
                      "def postprocess_observation(text: Any) -> str:\n"
                      "    assert isinstance({}, collections.abc.Mapping)\n"
                      "    return re.sub(r'\\s+', ' ', j.dumps(text))\n")


def test_valid_hooks_pass_and_run(tmp_path):
    inc = Scaffold.builtin("tiny")
    rev = good_revision(inc)
    rev.files["hooks.py"] = ("import re\n\ndef validate_write(op, args, files):\n"
                             "    if op == 'append' and args.get('text', '') in files.get(args.get('file', ''), ''):\n"
                             "        return 'duplicate: already in the file'\n    return None\n")
    cand = validate_candidate(rev, inc, tmp_path / "store")
    with cand.hook_runner() as runner:
        assert runner.call("validate_write", "append", {"file": "a", "text": "x"}, {"a": "x"}).startswith("duplicate")


def test_rejections_are_fed_back_and_attempts_kept(tmp_path, incumbent_traces):
    inc = Scaffold.builtin("tiny")
    valid = format_revision(good_revision(inc))
    reviewer_model = ScriptedModel(["I cannot do that.", valid.replace("<changes>", "<changes>\n- extra", 1)])
    bundle = build_bundle(inc, incumbent_traces, token_budget=2000)
    proposal = propose(MetaLLMReviewer(reviewer_model), bundle, inc, tmp_path / "store", tmp_path / "rec")
    assert [a["verdict"] for a in proposal.attempts] == ["rejected", "valid"]
    assert "missing <analysis>" in reviewer_model.calls[1][0].content  # the reason went back
    assert proposal.candidate_dir and Path(proposal.candidate_dir).is_dir()
    assert (tmp_path / "rec" / "attempt-0.reply.txt").read_text() == "I cannot do that."
    assert (tmp_path / "rec" / "proposal.json").is_file()


def test_review_keys_change_with_the_reviewer_prompt():
    from agent_core.review.propose import review_key
    from agent_core.review.reviewers import PROMPT

    inc = Scaffold.builtin("tiny")
    args = (inc, ["e1", "e2"], "meta-llm:m", 3, 12_000, [])
    assert review_key(*args) == review_key(*args, prompt=PROMPT.read_text())  # the shipped prompt by default
    assert review_key(*args, prompt=PROMPT.read_text() + "\nBe brief.") != review_key(*args)
