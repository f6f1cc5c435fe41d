"""`iteration`: the nightly run. Outer loop 1 (scaffold) then outer loop 2 (memory
specialist) on the scaffold that loop 1 leaves as incumbent; one report."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from pydantic import Field, model_validator

from agent_core.gate import GateConfig
from agent_core.meta.config import MetaLLMConfig
from agent_core.plots import Figure, bars_with_intervals as bars, lines as lines_plot, write_report
from agent_core.training.program import TrainingBudget
from flows.common import GameParams, Seeds, sync
from flows.scaffold_loop import ScaffoldLoopParams, scaffold_loop
from flows.training_loop import TrainingLoopParams, training_loop


class IterationParams(GameParams):
    eval_seeds: Seeds = Field([0, 1, 2, 3, 4], description="Fixed evaluation seeds (both loops).")
    pool_seeds: Seeds = Field([100, 101, 102, 103], description="Training-pool seeds, disjoint from eval_seeds.")
    confirm_seeds: Seeds = Field([10, 11, 12, 13], description="Held-out seeds a winner of either "
                                     "loop must win on again; disjoint from the others.")
    meta: MetaLLMConfig = Field(default_factory=MetaLLMConfig, description="The meta-LLM (reviewer and curator).")
    iterations: int = Field(2, ge=1, le=100, description="Scaffold-loop iterations.")
    patience: int = Field(2, ge=1, le=100, description="Scaffold loop: stop after this many without promotion.")
    trials: int = Field(2, ge=1, le=50, description="Training-loop trials per round.")
    rounds: int = Field(1, ge=1, le=20, description="Training-loop rounds of expert iteration (each pool "
                        "played by the round before's best specialist).")
    samples_per_seed: int = Field(1, ge=1, le=64, description="Training-loop episodes per pool seed each round "
                                  "(sample k with the models' sampling seed k); more than 1 needs a sampling "
                                  "temperature above 0.")
    gate: GateConfig = Field(default_factory=GateConfig, description="The promotion test of both loops.")
    train_base: str | None = Field(None, description="Base weights to train on (default: the local model).")
    train_budget: TrainingBudget = Field(default_factory=TrainingBudget, description="The training device, "
                                         "and caps on each trial over the curator's LoRA settings.")

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
                                  trials=self.trials, rounds=self.rounds, samples_per_seed=self.samples_per_seed,
                                  train_base=self.train_base, train_budget=self.train_budget)


def promoted_scaffolds(root: Path, game: str, start: str | None = None) -> set[str]:
    """Hashes of the scaffolds that were ever the incumbent for `game`: every promotion in
    the registry, the incumbents they replaced (the first is v0), and `start` (the hash the
    current run started from)."""
    from agent_core.registry import load_registry
    from agent_core.scaffold import Scaffold, ScaffoldError

    hashes = {start} if start else set()
    for entry in load_registry(root).history:
        if entry.get("kind") != "scaffolds" or entry.get("game") != game:
            continue
        for stored in (entry.get("path"), entry.get("previous")):
            try:
                scaffold = Scaffold.load(stored if Path(stored).is_absolute() else root / stored) if stored \
                    else Scaffold.builtin(game)
            except (ScaffoldError, OSError):  # a scaffold folder removed since: its hash is in the path
                hashes.add(Path(stored).name)
                continue
            hashes.add(scaffold.hash)
    return hashes


def night_rows(root: Path, game: str, max_steps: int, seeds: list[int], memory_model: str,
               promoted: set[str]) -> list[dict]:
    """Per night (UTC date the episodes started) and scaffold, like with like: finished
    episodes of `game` with this step budget, memory model and these seeds only (other
    budgets, models, seeds or specialists are left out). Each row: its progression mean
    over its seeds, the paper's two diagnostics pooled (`diagnostics.sql_aggregate`),
    whether the scaffold was ever promoted, and whether it played every seed."""
    from agent_core.archive import connect
    from agent_core.diagnostics import group_from_row, sql_aggregate

    if not (root / "archive" / "episodes").is_dir():
        return []
    con = connect(root / "archive")
    try:
        found = con.execute(
            "SELECT substr(e.started_at, 1, 10) AS night, e.scaffold_hash, count(DISTINCT e.seed), "
            f"avg(e.progression), {sql_aggregate('e')} FROM episodes e "
            "WHERE e.complete AND e.game = ? AND e.max_steps = ? AND e.memory_model = ? "
            "AND list_contains(?, e.seed) GROUP BY ALL ORDER BY night, e.scaffold_hash",
            [game, max_steps, memory_model, sorted(seeds)]).fetchall()
    finally:
        con.close()
    return [{"night": night, "scaffold": h, "seeds": k, "all_seeds": k == len(set(seeds)), "progression": p,
             "promoted": h in promoted, **group_from_row(rest).model_dump()}
            for night, h, k, p, *rest in found]


def best_per_night(rows: list[dict]) -> list[tuple[str, float]]:
    """(night, best mean progression) over the `night_rows` of scaffolds that were ever the
    incumbent and played every seed; candidates the gate kept out never count."""
    by_night: dict[str, list[float]] = {}
    for r in rows:
        if r["promoted"] and r["all_seeds"]:
            by_night.setdefault(r["night"], []).append(r["progression"])
    return [(night, max(v)) for night, v in sorted(by_night.items())]


def night_history(root: Path, game: str, max_steps: int, seeds: list[int], memory_model: str,
                  promoted: set[str]) -> tuple[str, list[Figure]]:
    """The history across nights (`night_rows`) as a labelled table and plots: the best
    mean progression per night among promoted scaffolds that played every seed, and the
    paper's two diagnostics by scaffold."""
    rows = night_rows(root, game, max_steps, seeds, memory_model, promoted)
    label = (f"Episodes of {game} with {max_steps} steps, memory model {memory_model}, seeds {sorted(seeds)} "
             "(scaffold-loop rollouts, and any evaluation that played the same); progression is the mean over "
             "seeds; growth = (final - seeded characters) / steps and write/search = successful writes / "
             "successful SEARCH/READ/TAIL, pooled over the episodes. *promoted*: the scaffold was the incumbent "
             "at some point (v0 or a promotion); others are candidates the gate kept out.")

    def ratio(r: dict) -> str:
        return f"{r['write_search_ratio']:.2f}" if r["write_search_ratio"] is not None else "- (no look-ups)"

    table = [label, "", "| night | scaffold | promoted | seeds | mean progression | growth chars/step | write/search |",
             "|---|---|---|---|---|---|---|"]
    table += [f"| {r['night']} | {r['scaffold']} | {'yes' if r['promoted'] else 'no'} | "
              f"{r['seeds']}{'' if r['all_seeds'] else f' of {len(set(seeds))}'} | {r['progression']:.3f} | "
              f"{r['growth_chars_per_step'] or 0.0:.1f} | {ratio(r)} |" for r in rows]
    points = [(i, best) for i, (_, best) in enumerate(best_per_night(rows))]
    nan = float("nan")
    labels = [(f"{r['night'][5:]} {r['scaffold'][:6]}{'*' if r['promoted'] else ''}",
               r["growth_chars_per_step"] if r["growth_chars_per_step"] is not None else nan,
               r["write_search_ratio"] if r["write_search_ratio"] is not None else nan) for r in rows]
    figures = [
        lines_plot("history.png", "best mean progression per night (promoted scaffolds)", {"promoted": points},
                   "night", "progression"),
        bars("growth.png", "memory growth per step, by scaffold (* promoted)", [(lab, g, g, g) for lab, g, _ in labels],
             "characters per step"),
        bars("write-search.png", "write-to-search ratio, by scaffold (* promoted)",
             [(lab, r, r, r) for lab, _, r in labels], "writes per look-up"),
    ]
    return "\n".join(table), figures


@flow(name="iteration")
def iteration(params: IterationParams = IterationParams()) -> dict:
    logger = get_run_logger()
    params.training().preflight()  # a wrong server, base or device fails now, not after the scaffold loop
    start = params.scaffold_loop().incumbent().hash  # the incumbent this night starts from
    scaffolds = scaffold_loop(params.scaffold_loop())
    training = training_loop(params.training(scaffolds["incumbent"]))
    lines = [f"# Nightly iteration: {params.game}", "", "## Scaffold loop", ""]
    lines += [f"- iteration {h['iteration']}: {h['verdict']} - {h.get('reason', '')}" for h in scaffolds["history"]]
    lines += ["", f"Incumbent scaffold: `{scaffolds['incumbent']}`", "", "## Training loop", "",
              Path(training["report"]).read_text()]
    promoted = promoted_scaffolds(params.root(), params.game_name, start)
    history, figures = night_history(params.root(), params.game_name, params.max_steps, params.eval_seeds,
                                     params.models.ids()[0], promoted)
    lines += ["## History across nights", "", history, "", "{{figure:history.png}}", "", "{{figure:growth.png}}",
              "", "{{figure:write-search.png}}"]
    from prefect.runtime import flow_run

    report = params.root() / "reports" / f"iteration-{flow_run.get_name() or 'local'}.md"
    inline = write_report(report, "\n".join(lines), figures)  # the training report's plots inline too
    create_markdown_artifact(inline, key="nightly-report", description=f"nightly iteration: {params.game}")
    sync(params.workspace, report, *report.parent.glob(f"{report.stem}-*.png"))
    logger.info("nightly report: %s", report)
    return {"report": str(report), "scaffold_loop": scaffolds, "training_loop": training}
