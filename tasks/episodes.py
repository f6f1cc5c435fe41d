"""Episode tasks: find finished episodes, play one episode."""

from __future__ import annotations

from prefect import task

from agent_core.episode import EpisodeSpec, finished_summary, play
from agent_core.models.base import TransientModelError
from agent_core.records import EpisodeSummary


def retry_on_transient_error(task, task_run, state) -> bool:
    """Retry only what a retry can fix: a model server down, overloaded or timing out. A bad
    request (400), an unknown model (404), an overflowing context, a bug or a bad scaffold
    fail the same way every time."""
    try:
        state.result()
    except TransientModelError:
        return True
    except Exception:
        return False
    return False


@task(name="find_finished_episodes")
def find_finished_episodes(specs: list[EpisodeSpec]) -> dict[int, EpisodeSummary]:
    """The episode cache, checked once per flow run: episodes whose finished trace is on
    disk under their content-addressed directory (see `agent_core.episode.finished_summary`)."""
    found = {i: finished_summary(spec) for i, spec in enumerate(specs)}
    return {i: s for i, s in found.items() if s is not None}


@task(name="run_episode", retries=2, retry_delay_seconds=[10, 60],
      retry_condition_fn=retry_on_transient_error, task_run_name="{spec.game}-{spec.task}-seed{spec.seed}")
def run_episode(spec: EpisodeSpec) -> EpisodeSummary:
    return play(spec)
