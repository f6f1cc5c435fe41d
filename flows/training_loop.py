"""`training_loop`: outer loop 2. Pool rollouts on seeds disjoint from the evaluation seeds
-> archive -> curate (meta-LLM or rule-based program) -> SFT dataset -> LoRA -> specialist
evaluation (adapter for memory, base for actions) against the base agent -> gate; up to N
trials, each revised from the last; the best passing adapter is promoted."""

from __future__ import annotations

import hashlib
import json
import statistics
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from pydantic import Field, field_validator, model_validator

from agent_core.diagnostics import Diagnostics
from agent_core.gate import GateConfig
from agent_core.meta import MetaLLMConfig
from agent_core.records import EpisodeSummary
from flows.common import GameParams, check_seeds, run_episodes, sync
from tasks.archive import archive_traces, diagnose_traces
from tasks.review import gate_candidate, promote_incumbent
from tasks.training import build_sft_dataset, curate, digest_pool, serve_adapter, train_adapter


class TrainingLoopParams(GameParams):
    """Outer loop 2. Validated before any episode starts."""

    pool_seeds: list[int] = Field([100, 101, 102, 103], min_length=1, description="Seeds of the episode pool (training data).")
    eval_seeds: list[int] = Field([0, 1, 2, 3], min_length=1, description="Fixed evaluation seeds; disjoint from pool_seeds.")
    meta: MetaLLMConfig = Field(default_factory=MetaLLMConfig, description="Who writes the curation programs.")
    trials: int = Field(2, ge=1, le=50, description="Curation/training trials.")
    gate: GateConfig = Field(default_factory=GateConfig, description="The promotion test.")
    train_base: str | None = Field(None, description="Base weights to train on (transformers folder); "
                                   "default: the local model. With a served model, the same base vLLM serves.")

    @field_validator("pool_seeds", "eval_seeds")
    @classmethod
    def _seeds(cls, seeds: list[int]) -> list[int]:
        return check_seeds(seeds)

    @model_validator(mode="after")
    def _disjoint(self) -> "TrainingLoopParams":
        shared = sorted(set(self.pool_seeds) & set(self.eval_seeds))
        if shared:
            raise ValueError(f"pool_seeds and eval_seeds must be disjoint (training on evaluation "
                             f"episodes would flatter the specialist); both hold {shared}")
        return self


def pool_key(params: TrainingLoopParams, scaffold_hash: str) -> str:
    blob = json.dumps([scaffold_hash, params.models.ids(), params.game, sorted(params.pool_seeds), params.max_steps])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def side_by_side(base: list[Diagnostics], spec: list[Diagnostics], base_runs: list[EpisodeSummary],
                 spec_runs: list[EpisodeSummary]) -> dict[str, dict[str, float | None]]:
    """Progression and memory diagnostics, base agent vs specialist, averaged over seeds."""
    def mean(values):
        values = [v for v in values if v is not None]
        return round(statistics.fmean(values), 4) if values else None

    rows = {}
    for name, (b, s) in {
        "progression": ([r.progression for r in base_runs], [r.progression for r in spec_runs]),
        "write_search_ratio": ([d.write_search_ratio for d in base], [d.write_search_ratio for d in spec]),
        "growth_chars_per_step": ([d.growth_chars_per_step for d in base], [d.growth_chars_per_step for d in spec]),
        "duplicate_write_ratio": ([d.duplicate_write_ratio for d in base], [d.duplicate_write_ratio for d in spec]),
        "invalid_op_rate": ([d.invalid_op_rate for d in base], [d.invalid_op_rate for d in spec]),
    }.items():
        rows[name] = {"base": mean(b), "specialist": mean(s)}
    return rows


@flow(name="training_loop")
def training_loop(params: TrainingLoopParams = TrainingLoopParams()) -> dict:
    logger = get_run_logger()
    params.models.check()
    params.meta.check()
    root, game = params.root(), params.game_name
    scaffold = params.incumbent()

    pool = run_episodes(params.specs(str(scaffold.root), params.pool_seeds), params.concurrency, label="pool")
    pool_archive = root / "pools" / pool_key(params, scaffold.hash) / "archive"
    sync(params.workspace, *archive_traces([s.trace_path for s in pool], str(pool_archive)))
    digest = digest_pool(str(pool_archive))

    base_runs = run_episodes(params.specs(str(scaffold.root), params.eval_seeds), params.concurrency, label="base")
    base_diag = diagnose_traces([s.trace_path for s in base_runs])
    trials: list[dict] = []
    for n in range(params.trials):
        trial: dict = {"trial": n}
        trials.append(trial)
        program = curate(str(scaffold.root), digest, params.meta, trials[:-1], params.train_base)
        if isinstance(program, str):
            trial["error"] = program
            continue
        trial["program"] = program.model_dump(mode="json")
        dataset = build_sft_dataset(str(pool_archive), program, str(root / "sft"))
        if isinstance(dataset, str):
            trial["error"] = dataset
            logger.info("trial %d: no training data: %s", n, dataset)
            continue
        result = train_adapter(dataset, program, str(root / "adapters"), params.train_base)
        trial.update(dataset=str(dataset.path), examples=dataset.examples, adapter=str(result.adapter_dir),
                     final_loss=result.final_loss, loss_curve=result.loss_curve)
        specialist = str(result.adapter_dir)
        if params.models.backend == "openai":
            specialist = serve_adapter(params.models.base_url, specialist)
        spec_models = params.models.model_copy(update={"specialist": specialist})
        spec_runs = run_episodes(params.specs(str(scaffold.root), params.eval_seeds, spec_models),
                                 params.concurrency, label=f"specialist trial {n}")
        spec_diag = diagnose_traces([s.trace_path for s in spec_runs])
        verdict = gate_candidate(params.eval_seeds, [s.progression for s in base_runs],
                                 [s.progression for s in spec_runs], params.gate,
                                 str(root / "verdicts" / f"{scaffold.hash}-base-vs-{Path(specialist).name}.json"))
        trial["verdict"] = verdict.model_dump()
        comparison = side_by_side(base_diag, spec_diag, base_runs, spec_runs)
        trial["comparison"] = comparison
        trial["diagnostics"] = {"base": comparison["write_search_ratio"]["base"],
                                "specialist": comparison["write_search_ratio"]["specialist"]}
        logger.info("trial %d: %s", n, verdict.reason)

    passing = [t for t in trials if t.get("verdict", {}).get("promote")]
    best = max(passing, key=lambda t: t["verdict"]["mean_candidate"], default=None)
    if best:
        from agent_core.gate import GateVerdict

        promote_incumbent(str(root), "adapters", game, best["adapter"], GateVerdict(**best["verdict"]))
    report = _report(params, scaffold.hash, trials, best)
    sync(params.workspace, report, *[p for p in (root / "adapters", root / "sft", root / "verdicts",
                                                 root / "registry.json") if p.exists()])
    return {"game": params.game, "trials": trials, "promoted": best["adapter"] if best else None,
            "report": str(report)}


def _report(params: TrainingLoopParams, scaffold_hash: str, trials: list[dict], best: dict | None) -> Path:
    from prefect.runtime import flow_run

    rows = [{"trial": t["trial"], "examples": t.get("examples"), "final_loss": t.get("final_loss"),
             "base": t.get("verdict", {}).get("mean_incumbent"), "specialist": t.get("verdict", {}).get("mean_candidate"),
             "promoted": t.get("verdict", {}).get("promote"), "note": t.get("error") or t.get("verdict", {}).get("reason")}
            for t in trials]
    create_table_artifact(rows, key="training-loop-trials", description="training trials")
    lines = [f"# Training loop: {params.game}, scaffold {scaffold_hash}", "",
             f"Promoted: {best['adapter'] if best else 'nothing (the base agent stays)'}", ""]
    for t in trials:
        lines.append(f"## Trial {t['trial']}")
        if "error" in t:
            lines += [f"Rejected: {t['error']}", ""]
            continue
        lines.append(f"{t['examples']} examples, final loss {t['final_loss']:.4f}; gate: {t['verdict']['reason']}")
        lines += ["", "| metric | base | specialist |", "|---|---|---|"]
        lines += [f"| {k} | {v['base']} | {v['specialist']} |" for k, v in t["comparison"].items()]
        lines.append("")
    markdown = "\n".join(lines)
    create_markdown_artifact(markdown, key="training-loop-summary", description="training loop summary")
    path = params.root() / "reports" / f"training-loop-{flow_run.get_name() or 'local'}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(markdown)
    return path
