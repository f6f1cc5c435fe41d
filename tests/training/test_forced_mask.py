"""The loss split: which target tokens the reply grammar forced (they teach nothing) and which
the model chose, on the real SmolLM2 tokenizer and llguidance."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent_core.models.base import Roles
from agent_core.archive import archive_trace
from agent_core.episode import run_episode
from agent_core.grammar import Grammar, log_grammar, plan_grammar
from agent_core.models.config import RoutineScript
from agent_core.models.scripted import ScriptedModel
from agent_core.scaffold import Scaffold
from environments import make_env
from agent_core.training.dataset import build_dataset, load_examples
from agent_core.training.encoding import IGNORE, encode_example, forced_mask
from agent_core.training.program import Composition, CurationProgram, LoraSettings, RoutineMix

pytestmark = pytest.mark.slow

#: LOG looks up, then writes; PLAN looks up, then the shared model acts (cut from the target)
SCRIPT = RoutineScript(log="<|SEARCH|>saw<|END|>", log_next="<|APPEND|>action_log.md|saw: step done<|END|><|DONE|>",
                       plan="<|SEARCH|>key<|END|>", plan_next="<|ACTION|>look<|END|>")
REPLY = "<|APPEND|>progress.md|note: the way out is the yellow door<|END|><|DONE|>"


@pytest.fixture(scope="module")
def tok(base_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(base_path, local_files_only=True)


def split(tok, grammar: str | None, reply: str) -> tuple[str, str, list[bool]]:
    """(chosen text, forced text, mask) of `reply` + end-of-turn, as training tokenizes it."""
    ids = tok(reply + "<|im_end|>", add_special_tokens=False)["input_ids"]
    mask = forced_mask(tok, grammar, ids)
    chosen = "".join(tok.decode([t]) for t, f in zip(ids, mask) if not f)
    forced = "".join(tok.decode([t]) for t, f in zip(ids, mask) if f)
    return chosen, forced, mask


def test_tags_file_names_and_the_end_are_forced_the_text_is_chosen(tok):
    grammar = log_grammar(["append", "replace", "search", "read"], 4, files=["progress.md", "notes.md"]).text
    chosen, forced, mask = split(tok, grammar, REPLY)
    # the model chose: the op (APP of APPEND), the file (progress, against notes), the whole
    # text, where it ends (< and | of the END tag: a text may hold '<'), and DONE's D
    assert chosen == "APPprogressnote: the way out is the yellow door<|D"
    assert forced == "<|END|>.md|END|><|ONE|><|im_end|>"
    assert mask[-1]  # <|DONE|> completes the grammar: end-of-turn is the only token left


def test_one_file_is_forced_and_a_reply_without_grammar_is_all_chosen(tok):
    one = log_grammar(["append"], 2, files=["progress.md"]).text
    chosen, _, _ = split(tok, one, REPLY)
    # the op is still a choice (APPEND or DONE); the one file name is not
    assert chosen == "APPnote: the way out is the yellow door<|D"
    assert split(tok, None, REPLY)[2] == [False] * len(tok(REPLY + "<|im_end|>", add_special_tokens=False)["input_ids"])


def test_look_ups_may_go_on_so_their_end_of_turn_is_chosen(tok):
    grammar = plan_grammar(["search", "read"], 3, files=["progress.md"]).text
    chosen, forced, mask = split(tok, grammar, "<|SEARCH|>door<|END|>")
    assert not mask[-1]  # another look-up could follow: ending the reply was the model's choice
    assert chosen.startswith("S") and "door" in chosen and "END|>" in forced


def test_a_reply_outside_its_grammar_is_refused(tok):
    grammar = log_grammar(["append"], 2, files=["progress.md"]).text
    with pytest.raises(ValueError, match="not a sentence"):
        split(tok, grammar, "<|APPEND|>other.md|x<|END|><|DONE|>")


@pytest.fixture(scope="module")
def constrained_archive(tmp_path_factory) -> Path:
    """Tiny episodes played under the reply grammars (scripted memory model), archived."""
    work = tmp_path_factory.mktemp("constrained")
    for seed in (3, 4):
        model = ScriptedModel(SCRIPT.reply, model_id="scripted-constrained")
        s = run_episode(make_env("tiny"), Scaffold.builtin("tiny"), Roles(memory=model, constrain=True), seed, 3,
                        work / f"ep-{seed}")
        archive_trace(s.trace_path, work / "archive")
    return work / "archive"


def examples_of(root: Path, out: Path) -> list[dict]:
    program = CurationProgram(selection_sql="select call_id from calls",
                              composition=Composition(routine_mix=RoutineMix(log=0.5, plan=0.5), max_per_episode=4,
                                                      min_examples=2, max_examples=8, top_episode_share=1.0),
                              lora=LoraSettings(rank=4, alpha=8, target_modules=["q_proj", "v_proj"],
                                                learning_rate=5e-3, max_seq_len=2048))
    return load_examples(build_dataset(root, program, out).path)


def test_dataset_examples_carry_their_grammar_and_encode_with_the_split(constrained_archive, archive, tmp_path, tok):
    examples = examples_of(constrained_archive, tmp_path / "constrained")
    assert {e["meta"]["routine"] for e in examples} == {"log", "plan"}
    for e in examples:
        assert e["grammar"] and Grammar(e["grammar"]).matches(e["target"])
        enc = encode_example(tok, e["messages"], e["target"], 2048, fixed=e["fixed"], grammar=e["grammar"])
        target = [f for f, label in zip(enc.forced, enc.labels) if label != IGNORE]
        assert not any(f for f, label in zip(enc.forced, enc.labels) if label == IGNORE)  # context: never forced
        assert any(target) and not all(target), e["target"]
    # episodes played without a grammar: no grammar, every target token is the model's choice
    free = examples_of(archive.root, tmp_path / "free")
    assert free and all(e["grammar"] is None for e in free)
    enc = encode_example(tok, free[0]["messages"], free[0]["target"], 2048, fixed=free[0]["fixed"])
    assert not any(enc.forced)
