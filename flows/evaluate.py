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

from agent_core.diagnostics import Diagnostics, aggregate, per_step_means
from agent_core.evaluation import PUBLISHED, PUBLISHED_DIAGNOSTICS, compare_all, estimate, per_seed
from agent_core.gate import GateConfig
from agent_core.plots import bars_with_intervals, lines, write_report
from agent_core.records import EpisodeSummary
from agent_core.registry import incumbent_path
from agent_core.scaffold import BUILTIN_DIR, Scaffold, ScaffoldError
from flows.common import GamesParams, Seeds, hooks_note, run_episodes, sync
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
    seeds: Seeds = Field([0, 1, 2, 3, 4], description="Every arm plays every seed.")
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
    labels = [a.label for a in params.arms]
    table, comparisons = summarise(owners, summaries, diagnostics, labels, params.gate)
    figures = []
    for game in games:
        episodes = [(s, label) for (label, g, _, _), s in zip(owners, summaries) if g == game]
        rows = [(r["arm"], r["mean"], r["ci_low"], r["ci_high"]) if r["ci_low"] is not None
                else (r["arm"], r["mean"], r["mean"], r["mean"]) for r in table if r["game"] == game]
        figures.append(bars_with_intervals(f"progression-{game}.png",
                                           f"{game}: progression (95% CI over seeds, where 3+)", rows))
        series = {label: per_step_means([s.trace_path for s, lab in episodes if lab == label],
                                        ("memory_chars", "progression")) for label in labels}
        figures.append(lines(f"memory-{game}.png", f"{game}: memory size over the episode",
                             {label: s["memory_chars"] for label, s in series.items()}, "step", "memory characters"))
        figures.append(lines(f"curve-{game}.png", f"{game}: progression over the episode",
                             {label: s["progression"] for label, s in series.items()}, "step", "progression"))
    markdown = hooks_note(summaries) + evaluation_markdown(params, budget, games, table, comparisons)
    from prefect.runtime import flow_run

    report = root / "reports" / f"evaluate-{flow_run.get_name() or 'local'}.md"
    inline = write_report(report, markdown, figures)
    create_markdown_artifact(inline, key="evaluate-report", description="evaluation: arms on the same seeds")
    sync(params.workspace, *archived, report, *report.parent.glob(f"{report.stem}-*.png"))
    logger.info("evaluation report: %s", report)
    return {"report": str(report), "table": table, "comparisons": comparisons,
            "episodes": [s.episode_id for s in summaries]}


def summarise(owners: list[tuple[str, str, str, int]], summaries: list[EpisodeSummary],
              diagnostics: list[Diagnostics], labels: list[str], gate: GateConfig) -> tuple[list[dict], list[dict]]:
    """The evaluation's table (one row per arm and game: estimate and memory diagnostics) and
    its pairwise comparisons (two-sided, Holm over all pairs and games). `owners[i]` is
    (arm, game, task, seed) of `summaries[i]` and `diagnostics[i]`."""
    results: dict[tuple[str, str], list[tuple[str, int, float]]] = defaultdict(list)
    diags: dict[tuple[str, str], list[Diagnostics]] = defaultdict(list)
    for (label, game, task, seed), s, d in zip(owners, summaries, diagnostics):
        results[(label, game)].append((task, seed, s.progression))
        diags[(label, game)].append(d)
    games = sorted({g for _, g, _, _ in owners})
    table = []
    for game in games:
        for label in labels:
            est = estimate(results[(label, game)])
            group = aggregate(diags[(label, game)])
            table.append({"arm": label, "game": game, **est.model_dump(),
                          **group.model_dump(include={"write_search_ratio", "growth_chars_per_step", "lookups",
                                                      "lookups_used", "writes_after_lookup",
                                                      "distinct_actions_per_episode",
                                                      "distinct_written_texts_per_episode"}),
                          "invalid_op_rate": statistics.fmean(d.invalid_op_rate for d in diags[(label, game)])})
    seeds = {game: {label: per_seed(results[(label, game)]) for label in labels} for game in games}
    comparisons = [c.model_dump() for c in compare_all(seeds, gate)]
    return table, comparisons


def evaluation_markdown(params: EvaluateParams, budget: int, games: list[str], table: list[dict], comparisons: list[dict]) -> str:
    lines_ = [f"# Evaluation: {len(params.arms)} arms, seeds {params.seeds}, {budget} steps", "",
              f"Model: {params.models.ids()[1]}. Progression is the mean over seeds (MiniHack: each seed "
              "averaged over its tasks first). **BALROG SE** is BALROG's standard error exactly: the population "
              "SD over all episodes of the game (tasks pooled) divided by sqrt(episodes). **95% CI** is ours: a "
              "percentile bootstrap over seeds, given from 3 seeds on. Memory diagnostics are pooled over the "
              "arm's episodes: growth = (final - seeded characters) / steps, write/search = successful writes / "
              "successful SEARCH/READ/TAIL; look-ups used = successful look-ups whose result a later call of the "
              "same step saw before writing or acting.", ""]
    note = params.models.replay_note()
    if note:
        lines_ += [f"**{note}**", ""]
    n_pairs = len(comparisons)
    for game in games:
        lines_ += [f"## {game}", "", "| arm | seeds | episodes | progression | BALROG SE | 95% CI | growth chars/step | "
                   "write/search | look-ups used | writes after look-up | distinct actions/episode | invalid-op rate |",
                   "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in (r for r in table if r["game"] == game):
            ci = f"[{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}]" if r["ci_low"] is not None else f"- ({r['ci_note']})"
            lines_.append(f"| {r['arm']} | {r['n']} | {r['episodes']} | {_fmt(r['mean'])} | {_fmt(r['se'])} | {ci} | "
                          f"{_fmt(r['growth_chars_per_step'], 1)} | {_fmt(r['write_search_ratio'], 2)} | "
                          f"{r['lookups_used']}/{r['lookups']} | {r['writes_after_lookup']} | "
                          f"{_fmt(r['distinct_actions_per_episode'], 1)} | {_fmt(r['invalid_op_rate'])} |")
        rows = [c for c in comparisons if c["game"] == game]
        if rows:
            lines_ += ["", f"Paired comparisons ({params.gate.test} test, two-sided, Holm's correction over all "
                       f"{n_pairs} pairs of all games, alpha {params.gate.alpha:g}):", "",
                       "| arm A | arm B | seeds | mean B - A | p | Holm p | verdict |", "|---|---|---|---|---|---|---|"]
            lines_ += [f"| {c['a']} | {c['b']} | {len(c['seeds'])} | {c['delta']:+.3f} | {c['p']:.3f} | "
                       f"{c['p_holm']:.3f} | {c['direction']} |" for c in rows]
        lines_ += ["", "{{figure:progression-" + game + ".png}}", "", "{{figure:memory-" + game + ".png}}",
                   "", "{{figure:curve-" + game + ".png}}", ""]
    lines_ += ["## Published reference values (not ours)", "",
               "| source | model | Crafter | MiniHack | NetHack |", "|---|---|---|---|---|"]
    lines_ += [f"| {p['source']} | {p['model']} | {p['crafter']} % | {p['minihack']} % | {p['nethack']} % |"
               for p in PUBLISHED]
    lines_ += ["", "| source | diagnostic | v0 | optimised |", "|---|---|---|---|"]
    lines_ += [f"| {p['source']} | {p['metric']} | {p['before']} | {p['after']} |" for p in PUBLISHED_DIAGNOSTICS]
    return "\n".join(lines_)
