"""Pieces every flow shares: fan episodes out with bounded concurrency, publish reports."""

from __future__ import annotations

import statistics
from collections import defaultdict
from contextlib import nullcontext
from pathlib import Path

from prefect import get_run_logger
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, create_table_artifact, update_progress_artifact
from prefect.futures import as_completed

from agent_core.diagnostics import Diagnostics, aggregate
from agent_core.episode import EpisodeSpec, HooksConfig
from agent_core.models.config import ModelConfig
from agent_core.records import EpisodeSummary
from agent_core.registry import incumbent_path
from agent_core.review.candidate import materialise
from agent_core.scaffold import Scaffold
from agent_core.workspace import push, workspace_root, workspace_url
from environments.registry import resolve
from flows.runners import RunnerConfig, episode_submitter
from tasks.episodes import find_finished_episodes, run_episode


def canonical_game(value: str) -> str:
    """`game` or `game/task` -> canonical `game/task`; an EnvError (a ValueError) lists valid names."""
    game, _, task = value.partition("/")
    return "/".join(resolve(game, task or None))


def check_seeds(seeds: list[int]) -> list[int]:
    if any(s < 0 for s in seeds):
        raise ValueError(f"seeds must be non-negative integers, got {seeds}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct, got {seeds}")
    return seeds


#: a flow's seed list: at least one, non-negative, distinct
Seeds = Annotated[list[int], Field(min_length=1), AfterValidator(check_seeds)]


def check_disjoint(**seed_sets: list[int]) -> None:
    """Seed sets with different jobs must not share a seed (e.g. training on evaluation
    episodes would flatter the specialist; confirming on the seeds a reviewer saw is no
    confirmation)."""
    names = list(seed_sets)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            shared = sorted(set(seed_sets[a]) & set(seed_sets[b]))
            if shared:
                raise ValueError(f"{a} and {b} must be disjoint; both hold {shared}")


class RunParams(BaseModel):
    """What every flow's parameters share: a step budget, the agent's models, where."""

    model_config = ConfigDict(extra="forbid")

    max_steps: int = Field(20, ge=1, le=100_000, description="Step budget per episode.")
    scaffold: str | None = Field(None, description="Scaffold directory; default: the registry's incumbent "
                                 "(outer loops) or the game's built-in v0.")
    models: ModelConfig = Field(default_factory=ModelConfig, description="The agent's models.")
    concurrency: int = Field(4, ge=1, le=512, description="Episodes in flight at once.")
    runner: RunnerConfig = Field(default_factory=RunnerConfig, description="Where the episodes run: this "
                                 "process's threads, or an existing Dask cluster (`flows.runners`).")
    workspace: str | None = Field(None, description="Workspace: a directory or an fsspec URL (default $AUTOMEM_WORKSPACE or ./automem-runs).")
    hooks: HooksConfig = Field(default_factory=HooksConfig, description="How scaffold hooks run: "
                               "`{confinement: os}` (the OS sandbox; refused where it cannot be set up) or "
                               "`{confinement: none}` (unconfined, recorded in every episode header and report).")

    def root(self) -> Path:
        """The local workspace directory (a remote workspace's mirror)."""
        return workspace_root(self.workspace).resolve()

    def spec(self, game: str, task: str, seed: int, scaffold_dir: str, models: ModelConfig | None = None,
             max_steps: int | None = None) -> EpisodeSpec:
        """One episode of this run, in its workspace."""
        return EpisodeSpec(game=game, task=task, seed=seed, max_steps=max_steps or self.max_steps,
                           scaffold_dir=scaffold_dir, models=models or self.models, workspace=str(self.root()),
                           remote=workspace_url(self.workspace), hooks=self.hooks)


class GamesParams(RunParams):
    """Several games (`game` or `game/task`) on the same seeds, plus `RunParams`."""

    games: list[str] = Field(["tiny"], min_length=1, description="Games as `game` or `game/task`, e.g. crafter, minihack/Quest-Easy.")
    seeds: Seeds = Field([0, 1, 2], description="Seeds (non-negative, distinct); every game plays every seed.")

    @field_validator("games")
    @classmethod
    def _known_games(cls, games: list[str]) -> list[str]:
        return [canonical_game(g) for g in games]


class GameParams(RunParams):
    """What the outer loops share: one game, plus `RunParams`."""

    game: str = Field("crafter", description="`game` or `game/task`.")

    @field_validator("game")
    @classmethod
    def _game(cls, value: str) -> str:
        return canonical_game(value)

    @property
    def game_name(self) -> str:
        return self.game.split("/", 1)[0]

    def specs(self, scaffold_dir: str, seeds: list[int], models: ModelConfig | None = None) -> list[EpisodeSpec]:
        game, task = self.game.split("/", 1)
        return [self.spec(game, task, s, scaffold_dir, models) for s in seeds]

    def incumbent(self) -> Scaffold:
        """The scaffold to start from (explicit, else the registry's, else v0), copied into
        the workspace's content-addressed store."""
        chosen = self.scaffold or incumbent_path(self.root(), "scaffolds", self.game_name)
        source = Scaffold.load(chosen) if chosen else Scaffold.builtin(self.game_name)
        store = self.root() / "scaffolds"
        store.mkdir(parents=True, exist_ok=True)
        return Scaffold.load(materialise({k: v.decode() for k, v in source.files.items()}, store))


class EpisodesFailed(RuntimeError):
    """Some episodes failed after their retries; the others' results are kept."""


def run_episodes(specs: list[EpisodeSpec], params: RunParams, label: str = "episodes") -> list[EpisodeSummary]:
    """Run episodes concurrently on the run's task runner (at most `params.concurrency` at a
    time, so a model server can batch their requests), with a progress artifact. Raises
    `EpisodesFailed` after all others finished if any episode failed for good."""
    logger = get_run_logger()
    # One lookup instead of a cached task run per episode: Prefect's per-task-run overhead
    # (~90 ms) would otherwise dominate a re-run whose episodes are all finished.
    results: dict[int, EpisodeSummary] = find_finished_episodes(specs)
    if results:
        logger.info("%d of %d episodes already played: reused", len(results), len(specs))
    progress = create_progress_artifact(100.0 * len(results) / len(specs),
                                        description=f"{label}: episodes finished")
    pending = [(i, s) for i, s in enumerate(specs) if i not in results]
    in_flight: list = []
    failures: list[str] = []
    with episode_submitter(params.runner, run_episode) if pending else nullcontext() as submit:
        while pending or in_flight:
            while pending and len(in_flight) < params.concurrency:
                index, spec = pending.pop(0)
                in_flight.append((submit(spec), index))
            finished = next(as_completed([f for f, _ in in_flight]))
            index = next(i for f, i in in_flight if f is finished)
            in_flight = [(f, i) for f, i in in_flight if f is not finished]
            finished.wait()  # sets the future's final state locally (no API round trip)
            state, spec = finished.state, specs[index]
            if state.is_completed():
                results[index] = finished.result()
            else:
                error = finished.result(raise_on_failure=False)
                reason = f"{type(error).__name__}: {error}" if isinstance(error, BaseException) else state.message
                failures.append(f"{spec.game}/{spec.task} seed {spec.seed}: {reason}")
                logger.error("episode failed for good: %s", failures[-1])
            update_progress_artifact(progress, 100.0 * (len(results) + len(failures)) / len(specs))
    if failures:
        raise EpisodesFailed(f"{len(failures)} of {len(specs)} episodes failed (the others are "
                             "kept and a re-run reuses them):\n" + "\n".join(failures))
    summaries = [results[i] for i in range(len(specs))]
    note = hooks_note(summaries)
    if note:
        logger.warning(note.strip())
    return summaries


def hooks_note(summaries: list[EpisodeSummary]) -> str:
    """A report's warning when scaffold hooks ran without the OS sandbox (the run's explicit
    choice `hooks: {confinement: none}`); empty otherwise."""
    unconfined = sum(s.hooks_confinement == "none" for s in summaries)
    if not unconfined:
        return ""
    return (f"**Hooks ran unconfined** in {unconfined} of {len(summaries)} episodes: the run chose "
            "`hooks: {confinement: none}`, so LLM-written hook code ran without the OS sandbox.\n\n")


def publish_rollout_report(summaries: list[EpisodeSummary], diagnostics: list[Diagnostics],
                           report_dir: Path, title: str = "rollout") -> Path:
    """Table + markdown artifacts in the UI, and the same markdown under the workspace."""
    rows = [
        {
            "game": s.game, "task": s.task, "seed": s.seed, "progression": round(s.progression, 4),
            "steps": s.steps, "memory_growth_chars_per_step": round(d.growth_chars_per_step, 2),
            "write_search_ratio": None if d.write_search_ratio is None else round(d.write_search_ratio, 3),
            "invalid_op_rate": round(d.invalid_op_rate, 3),
            "lookups_used": d.lookups_used, "lookups": d.lookups, "writes_after_lookup": d.writes_after_lookup,
            "distinct_actions": d.distinct_actions, "distinct_written_texts": d.distinct_written_texts,
            "kept_passages": d.kept_passages,
            "prompt_tokens": s.prompt_tokens, "completion_tokens": s.completion_tokens,
            "end_reason": s.end_reason, "episode_id": s.episode_id,
        }
        for s, d in zip(summaries, diagnostics)
    ]
    create_table_artifact(rows, key=f"{title}-episodes", description=f"{title}: per-episode results")
    markdown = summary_markdown(summaries, diagnostics, title)
    create_markdown_artifact(markdown, key=f"{title}-summary", description=f"{title} summary")
    from prefect.runtime import flow_run

    report_dir.mkdir(parents=True, exist_ok=True)
    path = report_dir / f"{title}-{flow_run.get_name() or 'local'}.md"
    path.write_text(markdown)
    return path


def sync(workspace: str | None, *paths: str | Path) -> None:
    """Push files written in the local workspace to a remote (fsspec URL) workspace."""
    push(workspace, *(Path(p) for p in paths))


def summary_markdown(summaries: list[EpisodeSummary], diagnostics: list[Diagnostics], title: str) -> str:
    groups: dict[tuple[str, str], list[tuple[EpisodeSummary, Diagnostics]]] = defaultdict(list)
    for s, d in zip(summaries, diagnostics):
        groups[(s.game, s.task)].append((s, d))
    lines = [f"# {title}", "", *([hooks_note(summaries)] if hooks_note(summaries) else []),
             "| game | task | episodes | mean progression | sd | growth chars/step | "
             "write/search | look-ups used | writes after look-up | distinct actions/episode | invalid-op rate | "
             "tokens |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for (game, task), items in sorted(groups.items()):
        prog = [s.progression for s, _ in items]
        pooled = aggregate([d for _, d in items])  # the one definition of the paper's two diagnostics
        ws = pooled.write_search_ratio
        lines.append(
            f"| {game} | {task} | {len(items)} | {statistics.fmean(prog):.4f} | "
            f"{statistics.pstdev(prog):.4f} | {pooled.growth_chars_per_step or 0.0:.1f} | "
            f"{(ws if ws is not None else float('nan')):.2f} | {pooled.lookups_used}/{pooled.lookups} | "
            f"{pooled.writes_after_lookup} | {pooled.distinct_actions_per_episode or 0.0:.1f} | "
            f"{statistics.fmean(d.invalid_op_rate for _, d in items):.3f} | "
            f"{sum(s.prompt_tokens + s.completion_tokens for s, _ in items)} |")
    return "\n".join(lines) + "\n"
