"""`evaluate`: several agents (arms) on the same games and seeds, with confidence intervals,
pairwise paired tests, memory diagnostics, plots and the published reference values.

An arm is the context-window baseline, a scaffold (`v0`, the registry's `incumbent`, or a
directory), optionally with a memory-specialist adapter. Every episode goes through the
episode cache: re-evaluating arms already played costs nothing.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from pydantic import BaseModel, ConfigDict, Field, model_validator

from agent_core.diagnostics import Diagnostics, per_step_means
from agent_core.evaluation import PUBLISHED, PUBLISHED_DIAGNOSTICS, compare, estimate, per_seed
from agent_core.gate import GateConfig
from agent_core.plots import bars_with_intervals, lines, write_report
from agent_core.records import EpisodeSummary
from agent_core.registry import incumbent_path
from agent_core.scaffold import BUILTIN_DIR, Scaffold, ScaffoldError
from flows.common import GamesParams, run_episodes, sync
from tasks.archive import archive_traces, diagnose_traces


class Arm(BaseModel):
    """One agent to evaluate."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, description="Label in reports (default: derived from the others).")
    scaffold: str = Field(description="`baseline` (context window, no memory), `v0` (the game's built-in "
                          "scaffold), `incumbent` (the registry's) or a scaffold directory.")
    adapter: str | None = Field(None, description="A memory-specialist adapter (directory, or a served name).")
    max_steps: int | None = Field(None, ge=1, description="Step budget, if not the run's.")

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        base = self.scaffold if self.scaffold in ("baseline", "v0", "incumbent") else Path(self.scaffold).name
        return base + (f"+{Path(self.adapter).name}" if self.adapter else "")

    def scaffold_dir(self, game: str, workspace: Path) -> str:
        if self.scaffold == "baseline":
            return str(BUILTIN_DIR / "baseline")
        if self.scaffold == "v0":
            return str(Scaffold.builtin(game).root)
        if self.scaffold == "incumbent":
            return incumbent_path(workspace, "scaffolds", game) or str(Scaffold.builtin(game).root)
        return self.scaffold


class EvaluateParams(GamesParams):
    """Arms x games x seeds (several MiniHack tasks are averaged per seed, as BALROG does).
    Validated before any episode starts."""

    arms: list[Arm] = Field(min_length=1, description="The agents to compare.")
    seeds: list[int] = Field([0, 1, 2, 3, 4], min_length=1, description="Every arm plays every seed.")
    gate: GateConfig = Field(default_factory=GateConfig, description="The paired test between arms.")

    @model_validator(mode="after")
    def _arms(self) -> "EvaluateParams":
        labels = [a.label for a in self.arms]
        if len(set(labels)) != len(labels):
            raise ValueError(f"arm labels must be distinct, got {labels}; name them")
        budgets = {a.max_steps or self.max_steps for a in self.arms}
        if len(budgets) > 1:
            raise ValueError(f"arms with different step budgets cannot be compared: {sorted(budgets)}")
        for arm in self.arms:
            if arm.scaffold == "baseline" and arm.adapter:
                raise ValueError(f"arm {arm.label!r}: the baseline has no memory role for an adapter to play")
            if arm.scaffold not in ("baseline", "v0", "incumbent"):
                try:
                    Scaffold.load(arm.scaffold)
                except ScaffoldError as exc:
                    raise ValueError(f"arm {arm.label!r}: {exc} (use baseline, v0, incumbent or a scaffold "
                                     "directory)") from None
        return self


def _fmt(x: float | None, digits: int = 3) -> str:
    return "-" if x is None or x != x else f"{x:.{digits}f}"


@flow(name="evaluate")
def evaluate(params: EvaluateParams) -> dict:
    logger = get_run_logger()
    root = params.root()
    budget = params.arms[0].max_steps or params.max_steps
    specs, owners = [], []
    for arm in params.arms:
        models = params.models.model_copy(update={"specialist": arm.adapter}) if arm.adapter else params.models
        models.check()
        for entry in params.games:
            game, task = entry.split("/", 1)
            scaffold = arm.scaffold_dir(game, root)
            for seed in params.seeds:
                specs.append(params.spec(game, task, seed, scaffold, models, budget))
                owners.append((arm.label, game, task, seed))
    logger.info("evaluate: %d arms x %d games x %d seeds = %d episodes", len(params.arms), len(params.games),
                len(params.seeds), len(specs))
    summaries = run_episodes(specs, params, label="evaluate")
    traces = [s.trace_path for s in summaries]
    archived = archive_traces(traces, str(root / "archive"))
    diagnostics = diagnose_traces(traces)

    games = sorted({g for _, g, _, _ in owners})
    results: dict[tuple[str, str], list[tuple[str, int, float]]] = defaultdict(list)
    episodes: dict[tuple[str, str], list[tuple[EpisodeSummary, Diagnostics]]] = defaultdict(list)
    for (label, game, task, seed), s, d in zip(owners, summaries, diagnostics):
        results[(label, game)].append((task, seed, s.progression))
        episodes[(label, game)].append((s, d))
    labels = [a.label for a in params.arms]
    table, comparisons, figures = [], [], []
    for game in games:
        seeds = {label: per_seed(results[(label, game)]) for label in labels}
        for label in labels:
            est = estimate(list(seeds[label].values()))
            diag = [d for _, d in episodes[(label, game)]]
            ws = [d.write_search_ratio for d in diag if d.write_search_ratio is not None]
            table.append({"arm": label, "game": game, "n": est.n, "mean": est.mean, "se": est.se,
                          "ci_low": est.ci_low, "ci_high": est.ci_high,
                          "growth_chars_per_step": statistics.fmean(d.growth_chars_per_step for d in diag),
                          "write_search_ratio": statistics.fmean(ws) if ws else None,
                          "invalid_op_rate": statistics.fmean(d.invalid_op_rate for d in diag)})
        for i, a in enumerate(labels):
            for b in labels[i + 1:]:
                verdict = compare(a, seeds[a], b, seeds[b], params.gate)
                if verdict:
                    comparisons.append({"game": game, "a": a, "b": b, "delta": verdict.delta, "p": verdict.p_value,
                                        "better": verdict.promote})
        rows = [(r["arm"], r["mean"], r["ci_low"], r["ci_high"]) for r in table if r["game"] == game]
        figures.append(bars_with_intervals(f"progression-{game}.png", f"{game}: progression (95% CI)", rows))
        series = {label: per_step_means([s.trace_path for s, _ in episodes[(label, game)]],
                                        ("memory_chars", "progression")) for label in labels}
        figures.append(lines(f"memory-{game}.png", f"{game}: memory size over the episode",
                             {label: s["memory_chars"] for label, s in series.items()}, "step", "memory characters"))
        figures.append(lines(f"curve-{game}.png", f"{game}: progression over the episode",
                             {label: s["progression"] for label, s in series.items()}, "step", "progression"))
    markdown = _markdown(params, budget, games, table, comparisons)
    from prefect.runtime import flow_run

    report = root / "reports" / f"evaluate-{flow_run.get_name() or 'local'}.md"
    inline = write_report(report, markdown, figures)
    create_markdown_artifact(inline, key="evaluate-report", description="evaluation: arms on the same seeds")
    sync(params.workspace, *archived, report, *report.parent.glob(f"{report.stem}-*.png"))
    logger.info("evaluation report: %s", report)
    return {"report": str(report), "table": table, "comparisons": comparisons,
            "episodes": [s.episode_id for s in summaries]}


def _markdown(params: EvaluateParams, budget: int, games: list[str], table: list[dict], comparisons: list[dict]) -> str:
    lines_ = [f"# Evaluation: {len(params.arms)} arms, seeds {params.seeds}, {budget} steps", "",
              f"Model: {params.models.ids()[1]}. Progression is the mean over seeds (MiniHack: each seed "
              "averaged over its tasks first), with BALROG's standard error and a 95% bootstrap interval "
              "over seeds.", ""]
    for game in games:
        lines_ += [f"## {game}", "", "| arm | seeds | progression | SE | 95% CI | growth chars/step | "
                   "write/search | invalid-op rate |", "|---|---|---|---|---|---|---|---|"]
        for r in (r for r in table if r["game"] == game):
            lines_.append(f"| {r['arm']} | {r['n']} | {_fmt(r['mean'])} | {_fmt(r['se'])} | "
                          f"[{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}] | {_fmt(r['growth_chars_per_step'], 1)} | "
                          f"{_fmt(r['write_search_ratio'], 2)} | {_fmt(r['invalid_op_rate'])} |")
        rows = [c for c in comparisons if c["game"] == game]
        if rows:
            lines_ += ["", f"Paired comparisons ({params.gate.test} test, one-sided, alpha {params.gate.alpha:g}):",
                       "", "| arm A | arm B | mean B - A | p | B better |", "|---|---|---|---|---|"]
            lines_ += [f"| {c['a']} | {c['b']} | {c['delta']:+.3f} | {c['p']:.3f} | {'yes' if c['better'] else 'no'} |"
                       for c in rows]
        lines_ += ["", "{{figure:progression-" + game + ".png}}", "", "{{figure:memory-" + game + ".png}}",
                   "", "{{figure:curve-" + game + ".png}}", ""]
    lines_ += ["## Published reference values (not ours)", "",
               "| source | model | Crafter | MiniHack | NetHack |", "|---|---|---|---|---|"]
    lines_ += [f"| {p['source']} | {p['model']} | {p['crafter']} % | {p['minihack']} % | {p['nethack']} % |"
               for p in PUBLISHED]
    lines_ += ["", "| source | diagnostic | v0 | optimised |", "|---|---|---|---|"]
    lines_ += [f"| {p['source']} | {p['metric']} | {p['before']} | {p['after']} |" for p in PUBLISHED_DIAGNOSTICS]
    return "\n".join(lines_)
