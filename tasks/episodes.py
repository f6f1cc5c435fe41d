"""Episode tasks: play one episode (cached by everything that determines it)."""

from __future__ import annotations

import hashlib
from typing import Any

from prefect import task
from prefect.context import TaskRunContext

from agent_core.episode import EpisodeSpec, play
from agent_core.models.base import ModelError
from agent_core.records import EpisodeSummary


def episode_cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    """The episode's output directory, which is named by its key (scaffold hash, model ids,
    game, task, seed, step budget, sampling) inside its workspace."""
    out = str(parameters["spec"].out_dir().resolve())
    return "episode-" + hashlib.sha256(out.encode()).hexdigest()[:24]


def retry_on_model_error(task, task_run, state) -> bool:
    """Retry only what a retry can fix: the model server failing. A bug or bad scaffold fails
    the same way every time."""
    try:
        state.result()
    except ModelError:
        return True
    except Exception:
        return False
    return False


@task(name="run_episode", cache_key_fn=episode_cache_key, persist_result=True,
      retries=2, retry_delay_seconds=[10, 60], retry_condition_fn=retry_on_model_error,
      task_run_name="{spec.game}-{spec.task}-seed{spec.seed}")
def run_episode(spec: EpisodeSpec) -> EpisodeSummary:
    return play(spec)
