"""`iteration`: the nightly run. Outer loop 1 (scaffold) then outer loop 2 (memory
specialist) on the scaffold that loop 1 leaves as incumbent; one report."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from pydantic import Field, field_validator, model_validator

from agent_core.gate import GateConfig
from agent_core.meta import MetaLLMConfig
from agent_core.plots import Figure, bars_with_intervals as bars, lines as lines_plot, write_report
from agent_core.training.program import TrainingBudget
from flows.common import GameParams, check_seeds, sync
from flows.scaffold_loop import ScaffoldLoopParams, scaffold_loop
from flows.training_loop import TrainingLoopParams, training_loop


class IterationParams(GameParams):
    eval_seeds: list[int] = Field([0, 1, 2, 3, 4], min_length=1, description="Fixed evaluation seeds (both loops).")
    pool_seeds: list[int] = Field([100, 101, 102, 103], min_length=1, description="Training-pool seeds, disjoint from eval_seeds.")
    confirm_seeds: list[int] = Field([10, 11, 12, 13], min_length=1, description="Held-out seeds a winner of either "
                                     "loop must win on again; disjoint from the others.")
    meta: MetaLLMConfig = Field(default_factory=MetaLLMConfig, description="The meta-LLM (reviewer and curator).")
    iterations: int = Field(2, ge=1, le=100, description="Scaffold-loop iterations.")
    patience: int = Field(2, ge=1, le=100, description="Scaffold loop: stop after this many without promotion.")
    trials: int = Field(2, ge=1, le=50, description="Training-loop trials.")
    gate: GateConfig = Field(default_factory=GateConfig, description="The promotion test of both loops.")
    train_base: str | None = Field(None, description="Base weights to train on (default: the local model).")
    train_budget: TrainingBudget = Field(default_factory=TrainingBudget, description="The training device, "
                                         "and caps on each trial over the curator's LoRA settings.")

    @field_validator("eval_seeds", "pool_seeds", "confirm_seeds")
    @classmethod
    def _seeds(cls, seeds: list[int]) -> list[int]:
        return check_seeds(seeds)

    @model_validator(mode="after")
    def _loops(self) -> "IterationParams":
        self.scaffold_loop()  # fail before anything runs (e.g. overlapping or too few seeds)
        self.training()
        return self

    def _shared(self) -> dict:
        return dict(game=self.game, max_steps=self.max_steps, scaffold=self.scaffold, models=self.models,
                    concurrency=self.concurrency, runner=self.runner, workspace=self.workspace, gate=self.gate,
                    confirm_seeds=self.confirm_seeds)

    def scaffold_loop(self) -> ScaffoldLoopParams:
        return ScaffoldLoopParams(**self._shared(), seeds=self.eval_seeds, reviewer=self.meta,
                                  iterations=self.iterations, patience=self.patience)

    def training(self, scaffold: str | None = None) -> TrainingLoopParams:
        return TrainingLoopParams(**{**self._shared(), "scaffold": scaffold or self.scaffold},
                                  pool_seeds=self.pool_seeds, eval_seeds=self.eval_seeds, meta=self.meta,
                                  trials=self.trials, train_base=self.train_base, train_budget=self.train_budget)


def night_history(root: Path, game: str) -> tuple[str, list[Figure]]:
    """Per night (UTC date the episodes started) and scaffold: the episodes of the scaffold
    loop's seeds, their mean progression, memory growth per step and write-to-search ratio
    (the paper's two diagnostics), from the workspace's Parquet archive."""
    from agent_core.archive import connect
    from agent_core.diagnostics import CONSULTS, WRITES, sql_list

    rows: list[tuple] = []
    if (root / "archive" / "episodes").is_dir():
        con = connect(root / "archive")
        try:
            rows = con.execute(
                "WITH ops AS (SELECT episode_id, "
                f"  count(*) FILTER (WHERE op IN ({sql_list(WRITES)})) AS w, "
                f"  count(*) FILTER (WHERE op IN ({sql_list(CONSULTS)})) AS c FROM memory_ops GROUP BY ALL) "
                "SELECT substr(e.started_at, 1, 10) AS night, e.scaffold_hash, count(*), avg(e.progression), "
                "  avg(e.memory_chars / greatest(e.steps, 1)), sum(coalesce(o.w, 0)), sum(coalesce(o.c, 0)) "
                "FROM episodes e LEFT JOIN ops o ON o.episode_id = e.episode_id WHERE e.game = ? "
                "GROUP BY ALL ORDER BY night, e.scaffold_hash", [game]).fetchall()
        finally:
            con.close()
    table = ["| night | scaffold | episodes | mean progression | growth chars/step | write/search |",
             "|---|---|---|---|---|---|"]
    table += [f"| {n} | {h} | {k} | {p:.3f} | {g:.1f} | {f'{w / c:.2f}' if c else '- (no look-ups)'} |"
              for n, h, k, p, g, w, c in rows]
    by_night: dict[str, list[float]] = {}
    for night, _, _, p, *_ in rows:
        by_night.setdefault(night, []).append(p)
    points = [(i, max(v)) for i, (_, v) in enumerate(sorted(by_night.items()))]
    labels = [(f"{n[5:]} {h[:6]}", g, w / c if c else float("nan")) for n, h, _, _, g, w, c in rows]
    figures = [
        lines_plot("history.png", "best mean progression per night", {"scaffolds": points}, "night", "progression"),
        bars("growth.png", "memory growth per step, by scaffold", [(lab, g, g, g) for lab, g, _ in labels],
             "characters per step"),
        bars("write-search.png", "write-to-search ratio, by scaffold", [(lab, r, r, r) for lab, _, r in labels],
             "writes per look-up"),
    ]
    return "\n".join(table), figures


@flow(name="iteration")
def iteration(params: IterationParams = IterationParams()) -> dict:
    logger = get_run_logger()
    params.training().preflight()  # a wrong server, base or device fails now, not after the scaffold loop
    scaffolds = scaffold_loop(params.scaffold_loop())
    training = training_loop(params.training(scaffolds["incumbent"]))
    lines = [f"# Nightly iteration: {params.game}", "", "## Scaffold loop", ""]
    lines += [f"- iteration {h['iteration']}: {h['verdict']} - {h.get('reason', '')}" for h in scaffolds["history"]]
    lines += ["", f"Incumbent scaffold: `{scaffolds['incumbent']}`", "", "## Training loop", "",
              Path(training["report"]).read_text()]
    history, figures = night_history(params.root(), params.game_name)
    lines += ["## History across nights", "", history, "", "{{figure:history.png}}", "", "{{figure:growth.png}}",
              "", "{{figure:write-search.png}}"]
    from prefect.runtime import flow_run

    report = params.root() / "reports" / f"iteration-{flow_run.get_name() or 'local'}.md"
    inline = write_report(report, "\n".join(lines), figures)  # the training report's plots inline too
    create_markdown_artifact(inline, key="nightly-report", description=f"nightly iteration: {params.game}")
    sync(params.workspace, report, *report.parent.glob(f"{report.stem}-*.png"))
    logger.info("nightly report: %s", report)
    return {"report": str(report), "scaffold_loop": scaffolds, "training_loop": training}
