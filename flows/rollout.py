"""`rollout`: fan out seeds x games over a scaffold and models, archive, summarise."""

from __future__ import annotations

from prefect import flow, get_run_logger

from agent_core.episode import EpisodeSpec
from agent_core.scaffold import Scaffold
from flows.common import GamesParams, publish_rollout_report, run_episodes, sync
from tasks.archive import archive_traces, diagnose_traces


class RolloutParams(GamesParams):
    """What to play. Validated before any episode starts."""

    def episode_specs(self) -> list[EpisodeSpec]:
        specs = []
        for entry in self.games:
            game, task = entry.split("/", 1)
            scaffold = self.scaffold or str(Scaffold.builtin(game).root)
            specs += [self.spec(game, task, seed, scaffold) for seed in self.seeds]
        return specs


@flow(name="rollout")
def rollout(params: RolloutParams = RolloutParams()) -> dict:
    """Play every (game, seed), archive the traces to Parquet, publish a report."""
    logger = get_run_logger()
    params.models.check()  # an unreachable model server fails here, before any episode
    specs = params.episode_specs()
    logger.info("rollout: %d episodes, concurrency %d", len(specs), params.concurrency)
    summaries = run_episodes(specs, params, label="rollout")
    traces = [s.trace_path for s in summaries]
    archived = archive_traces(traces, str(params.root() / "archive"))
    diagnostics = diagnose_traces(traces)
    report = publish_rollout_report(summaries, diagnostics, params.root() / "reports")
    sync(params.workspace, *archived, report)
    logger.info("rollout report: %s", report)
    return {"report": str(report), "episodes": [s.model_dump() for s in summaries]}
