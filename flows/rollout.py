"""`rollout`: fan out seeds x games over a scaffold and models, archive, summarise."""

from __future__ import annotations

from prefect import flow, get_run_logger
from pydantic import Field, field_validator

from agent_core.episode import EpisodeSpec
from agent_core.scaffold import Scaffold
from agent_core.workspace import workspace_url
from flows.common import RunParams, canonical_game, check_seeds, publish_rollout_report, run_episodes, sync
from tasks.archive import archive_traces, diagnose_traces


class RolloutParams(RunParams):
    """What to play. Validated before any episode starts."""

    games: list[str] = Field(["tiny"], min_length=1, description="Games as `game` or `game/task`, e.g. crafter, minihack/Quest-Easy.")
    seeds: list[int] = Field([0, 1, 2], min_length=1, description="Seeds (non-negative, distinct); every game plays every seed.")

    @field_validator("games")
    @classmethod
    def _known_games(cls, games: list[str]) -> list[str]:
        return [canonical_game(g) for g in games]

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, seeds: list[int]) -> list[int]:
        return check_seeds(seeds)

    def episode_specs(self) -> list[EpisodeSpec]:
        specs = []
        for entry in self.games:
            game, task = entry.split("/", 1)
            scaffold = self.scaffold or str(Scaffold.builtin(game).root)
            specs += [EpisodeSpec(game=game, task=task, seed=seed, max_steps=self.max_steps,
                                  scaffold_dir=scaffold, models=self.models, workspace=str(self.root()),
                                  remote=workspace_url(self.workspace))
                      for seed in self.seeds]
        return specs


@flow(name="rollout")
def rollout(params: RolloutParams = RolloutParams()) -> dict:
    """Play every (game, seed), archive the traces to Parquet, publish a report."""
    logger = get_run_logger()
    params.models.check()  # an unreachable model server fails here, before any episode
    specs = params.episode_specs()
    logger.info("rollout: %d episodes, concurrency %d", len(specs), params.concurrency)
    summaries = run_episodes(specs, params.concurrency, label="rollout")
    traces = [s.trace_path for s in summaries]
    archived = archive_traces(traces, str(params.root() / "archive"))
    diagnostics = diagnose_traces(traces)
    report = publish_rollout_report(summaries, diagnostics, params.root() / "reports")
    sync(params.workspace, *archived, report)
    logger.info("rollout report: %s", report)
    return {"report": str(report), "episodes": [s.model_dump() for s in summaries]}
