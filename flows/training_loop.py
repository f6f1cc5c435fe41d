"""`training_loop`: outer loop 2. Pool rollouts on seeds disjoint from the evaluation seeds
-> archive -> curate (meta-LLM or rule-based program) -> SFT dataset -> LoRA -> specialist
evaluation (adapter for memory, base for actions) against the incumbent (the promoted
specialist of an earlier night, else the base agent) -> gate; up to N trials, each revised
from the last; Holm's correction over the trials; the best passing adapter must win again on
held-out confirmation seeds before it is promoted."""

from __future__ import annotations

import hashlib
import json
import statistics
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from pydantic import Field, model_validator

from agent_core.diagnostics import Diagnostics, aggregate
from agent_core.episode import EpisodeSpec
from agent_core.gate import GateConfig, adjust, holm
from agent_core.loop_records import TrialRecord
from agent_core.registry import incumbent_path
from agent_core.meta.config import MetaLLMConfig
from agent_core.models.base import ModelError
from agent_core.models.config import ModelConfig
from agent_core.plots import write_report
from agent_core.records import EpisodeSummary
from agent_core.training.program import ProgramError, TrainingBudget
from flows.common import GameParams, Seeds, check_disjoint, run_episodes, sync
from tasks.archive import archive_traces, diagnose_traces
from tasks.review import confirm_candidate, gate_candidate, promote_incumbent
from tasks.training import build_sft_dataset, curate, digest_pool, serve_adapter, train_adapter


class TrainingLoopParams(GameParams):
    """Outer loop 2. Validated before any episode starts."""

    pool_seeds: Seeds = Field([100, 101, 102, 103], description="Seeds of the episode pool (training data).")
    eval_seeds: Seeds = Field([0, 1, 2, 3, 4], description="Fixed evaluation seeds; disjoint from pool_seeds.")
    confirm_seeds: Seeds = Field([10, 11, 12, 13], description="Held-out seeds the best trial must "
                                     "win on again before promotion; disjoint from the others, never shown to the curator.")
    meta: MetaLLMConfig = Field(default_factory=MetaLLMConfig, description="Who writes the curation programs.")
    trials: int = Field(2, ge=1, le=50, description="Curation/training trials per round.")
    rounds: int = Field(1, ge=1, le=20, description="Rounds of expert iteration (rejection-sampling "
                        "fine-tuning, as in STaR and ReST-EM): each round plays the pool with that round's "
                        "memory model (round 0: the incumbent; then the best specialist of the round "
                        "before), curates the model's own replies, trains a LoRA on the base and evaluates "
                        "it. The paper's loop 2 is one round.")
    samples_per_seed: int = Field(1, ge=1, le=64, description="Episodes per pool seed each round: sample k "
                                  "plays with the models' sampling seed k (`ModelConfig.seed`; sample 0 with the "
                                  "deployment's own, and with a deployment seed s, sample k with s + k), so a "
                                  "behaviour a model shows a few times in a hundred can reach the pool. Needs a "
                                  "sampling temperature above 0 (validated: with greedy decoding every sample is "
                                  "the same episode).")
    gate: GateConfig = Field(default_factory=GateConfig, description="The promotion test.")
    train_budget: TrainingBudget = Field(default_factory=TrainingBudget, description="The training device, "
                                         "and caps on each trial's LoRA training over the curator's settings.")
    train_base: str | None = Field(None, description="Base weights to train on (transformers folder); "
                                   "default: the local model. With a served model, the same base vLLM serves.")

    @model_validator(mode="after")
    def _disjoint(self) -> "TrainingLoopParams":
        check_disjoint(pool_seeds=self.pool_seeds, eval_seeds=self.eval_seeds, confirm_seeds=self.confirm_seeds)
        if self.models.backend == "openai" and not self.train_base:
            raise ValueError(f"with a served model ({self.models.model!r}) train_base is required: the weights "
                             "folder of the same base the server serves (adapters trained on another base do "
                             "not load there); the local default would be the small CPU model")
        self.check_sampled(self.models.temperature, "models.temperature")  # None: the scaffold's, checked in the flow
        self.gate.check_seeds(len(self.eval_seeds), "evaluation seeds", tests=self.trials * self.rounds)
        self.gate.check_seeds(len(self.confirm_seeds), "confirmation seeds")
        return self

    def check_sampled(self, temperature: float | None, source: str) -> None:
        """More than one sample per pool seed needs sampling: with greedy decoding (temperature
        0) every sample is the same episode under another key."""
        if self.samples_per_seed > 1 and temperature == 0:
            raise ValueError(f"samples_per_seed {self.samples_per_seed} needs a sampling temperature above 0, but "
                             f"{source} is 0 (greedy decoding: every sample would be the same episode); set "
                             "models.temperature above 0 (at most 2), or samples_per_seed to 1")

    def pool_specs(self, scaffold_dir: str, models: ModelConfig) -> list[EpisodeSpec]:
        """A round's pool: every pool seed `samples_per_seed` times, sample k with `sample_models`."""
        return [spec for k in range(self.samples_per_seed)
                for spec in self.specs(scaffold_dir, self.pool_seeds, sample_models(models, k))]

    def preflight(self) -> None:
        """What only this machine and the servers can tell, checked before any episode: the
        models answer, the served base is the training base, the training device exists."""
        from agent_core.models.devices import resolve_device

        self.models.check()
        self.meta.check()
        if self.models.backend == "openai":
            check_served_base(self.models.base_url, self.models.model, self.train_base)  # type: ignore[arg-type]
        resolve_device(self.train_budget.device)


def check_served_base(base_url: str, model: str, train_base: str) -> None:
    """The server must serve the base the adapters are trained on, identified by its
    configuration (architecture and sizes, `weights.base_signature`), never by its folder's
    name: `automem serve` reports it in `/v1/models`; for another server (vLLM) the reported
    `root` must be a folder readable here."""
    from agent_core.models.openai_client import served_card
    from agent_core.models.weights import base_signature

    card = served_card(base_url, model)
    if card is None:
        raise ValueError(f"{model!r} is not served at {base_url}; train_base cannot be checked against it")
    try:
        want = base_signature(train_base)
    except FileNotFoundError as exc:
        raise ValueError(f"train_base {train_base!r} is not a model folder: {exc}") from exc
    served, source = card.get("config"), "its /v1/models card"
    if not isinstance(served, dict):
        root = card.get("root")
        try:
            served, source = base_signature(root), f"{root}/config.json"
        except (FileNotFoundError, TypeError, OSError):
            raise ValueError(
                f"cannot tell which base {model!r} at {base_url} serves: it reports no configuration and its "
                f"root {root!r} is not a model folder readable here; serve it with `automem serve`, or from a "
                "folder this machine can read, to check train_base against it") from None
    differs = [f"{k}: served {served.get(k)!r}, train_base {want[k]!r}" for k in want if served.get(k) != want[k]]
    if differs:
        raise ValueError(f"train_base {train_base!r} is not the base the server serves: {model!r} at {base_url} "
                         f"has another configuration ({source}): {'; '.join(differs)}; train on the same weights")


def sample_models(models: ModelConfig, sample: int) -> ModelConfig:
    """The models that play sample `sample` of a pool seed: sample 0 with the deployment's
    sampling seed as it is (None: the scaffold's), sample k > 0 with that seed + k (k when
    it sets none). So sample 0 is the episode a one-sample pool plays, and a larger pool
    reuses a smaller one's episodes from the cache."""
    if sample == 0:
        return models
    return models.model_copy(update={"seed": (models.seed or 0) + sample})


def pool_key(params: TrainingLoopParams, scaffold_hash: str, models: ModelConfig | None = None) -> str:
    """The pool's archive folder: the scaffold, the models that played it (a round's
    specialist included) with their sampling overrides, the game, the seeds, the samples per
    seed and the step budget (the archive only grows: another pool needs another folder)."""
    models = models or params.models
    blob = json.dumps([scaffold_hash, models.ids(), models.sampling_overrides(), params.game,
                       sorted(params.pool_seeds), params.samples_per_seed, params.max_steps])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def side_by_side(base: list[Diagnostics], spec: list[Diagnostics], base_runs: list[EpisodeSummary],
                 spec_runs: list[EpisodeSummary]) -> dict[str, dict[str, float | None]]:
    """Progression and memory diagnostics, base agent vs specialist: progression, duplicate
    writes, invalid ops and kept passages (`diagnostics.kept_passage`) averaged over seeds; the paper's two diagnostics and what memory
    did pooled over the episodes (`diagnostics.aggregate`)."""
    def mean(values):
        values = [v for v in values if v is not None]
        return round(statistics.fmean(values), 4) if values else None

    def pooled(name: str) -> dict[str, float | None]:  # the paper's two: one definition (`aggregate`)
        b, s = getattr(aggregate(base), name), getattr(aggregate(spec), name)
        return {"base": None if b is None else round(b, 4), "specialist": None if s is None else round(s, 4)}

    rows = {}
    for name, (b, s) in {
        "progression": ([r.progression for r in base_runs], [r.progression for r in spec_runs]),
        "duplicate_write_ratio": ([d.duplicate_write_ratio for d in base], [d.duplicate_write_ratio for d in spec]),
        "invalid_op_rate": ([d.invalid_op_rate for d in base], [d.invalid_op_rate for d in spec]),
        "kept_passages": ([d.kept_passages for d in base], [d.kept_passages for d in spec]),
    }.items():
        rows[name] = {"base": mean(b), "specialist": mean(s)}
    rows["write_search_ratio"] = pooled("write_search_ratio")
    rows["growth_chars_per_step"] = pooled("growth_chars_per_step")
    rows["lookups_used"] = pooled("lookups_used")
    rows["writes_after_lookup"] = pooled("writes_after_lookup")
    return rows


@flow(name="training_loop")
def training_loop(params: TrainingLoopParams = TrainingLoopParams()) -> dict:
    logger = get_run_logger()
    params.preflight()
    root, game = params.root(), params.game_name
    scaffold = params.incumbent()
    params.check_sampled(params.models.sampling_for(scaffold.config.model).temperature,
                         f"the temperature of scaffold {scaffold.hash}")

    # the incumbent: the promoted specialist of an earlier night, else the base agent
    incumbent_adapter = incumbent_path(root, "adapters", game)
    incumbent_models = params.models
    if incumbent_adapter:
        served = serve_adapter(params.models, incumbent_adapter) \
            if params.models.backend == "openai" else incumbent_adapter
        incumbent_models = params.models.model_copy(update={"specialist": served})
    incumbent_label = f"specialist {Path(incumbent_adapter).name}" if incumbent_adapter else "base"
    base_runs = run_episodes(params.specs(str(scaffold.root), params.eval_seeds, incumbent_models),
                             params, label=incumbent_label)
    base_diag = diagnose_traces([s.trace_path for s in base_runs])
    trials: list[TrialRecord] = []
    spec_runs_by_trial: dict[int, list[EpisodeSummary]] = {}
    pool_models, pool_label = params.models, "base"
    for round_ in range(params.rounds):
        # expert iteration: this round's memory model plays the pool, its own good replies are
        # curated and a LoRA is trained on them (on the base); the round's best specialist
        # (by its mean on the evaluation seeds) plays the next round's pool
        pool = run_episodes(params.pool_specs(str(scaffold.root), pool_models), params, label=f"pool, round {round_}")
        pool_archive = root / "pools" / pool_key(params, scaffold.hash, pool_models) / "archive"
        sync(params.workspace, *archive_traces([s.trace_path for s in pool], str(pool_archive)))
        digest = digest_pool(str(pool_archive))
        first = len(trials)
        for n in range(first, first + params.trials):
            trial = TrialRecord(trial=n, round=round_, pool_model=pool_label)
            trials.append(trial)
            runs = _trial(params, trial, scaffold, digest, pool_archive, trials[:-1], base_runs, base_diag,
                          incumbent_adapter, root)
            if runs is not None:
                spec_runs_by_trial[n] = runs
        evaluated = [t for t in trials[first:] if t.verdict is not None]
        if not evaluated:
            logger.info("round %d: no trial reached an evaluation; no further rounds", round_)
            break
        lead = max(evaluated, key=lambda t: t.verdict.mean_candidate)
        pool_models = params.models.model_copy(update={"specialist": lead.specialist})
        pool_label = f"round {round_} trial {lead.trial} ({Path(lead.adapter).name})"
        logger.info("round %d: best specialist trial %d, mean progression %.4f (incumbent %.4f)", round_,
                    lead.trial, lead.verdict.mean_candidate, lead.verdict.mean_incumbent)

    # the trials were judged on the same seeds: Holm's correction before picking the best
    tested = [t for t in trials if t.verdict is not None]
    for t, p in zip(tested, holm([t.verdict.p_value for t in tested])):
        t.verdict = adjust(t.verdict, p, params.gate, tests=len(tested))
    passing = [t for t in tested if t.verdict.promote]
    best = max(passing, key=lambda t: t.verdict.mean_candidate, default=None)
    if best:  # the winner plays held-out seeds against the incumbent before it is believed
        inc_confirm = run_episodes(params.specs(str(scaffold.root), params.confirm_seeds, incumbent_models),
                                   params, label=f"{incumbent_label}, confirmation seeds")
        spec_confirm = run_episodes(params.specs(str(scaffold.root), params.confirm_seeds,
                                                 params.models.model_copy(update={"specialist": best.specialist})),
                                    params, label="best trial, confirmation seeds")
        best.verdict = confirm_candidate(best.verdict, params.confirm_seeds,
                                         [s.progression for s in inc_confirm], [s.progression for s in spec_confirm],
                                         params.gate, str(root / "verdicts" / f"{scaffold.hash}-{_name(incumbent_adapter)}"
                                                          f"-vs-{Path(best.specialist).name}.json"))
        logger.info("best trial %d on the confirmation seeds: %s", best.trial, best.verdict.reason)
        if not best.verdict.promote:
            best = None
    if best:
        promote_incumbent(str(root), "adapters", game, best.adapter, best.verdict)
    figures = _figures(trials, incumbent_label, base_runs, spec_runs_by_trial)
    report = _report(params, scaffold.hash, trials, best, incumbent_label, figures, pool_archive.parent / "curation")
    sync(params.workspace, report, *report.parent.glob(f"{report.stem}-*.png"),
         *[p for p in (root / "adapters", root / "sft", root / "verdicts",
                                                 root / "registry.json") if p.exists()])
    return {"game": params.game, "trials": [t.data() for t in trials], "promoted": best.adapter if best else None,
            "report": str(report)}


def _trial(params: TrainingLoopParams, trial: TrialRecord, scaffold, digest: str, pool_archive: Path,
           earlier: list[TrialRecord], base_runs: list[EpisodeSummary], base_diag: list[Diagnostics],
           incumbent_adapter: str | None, root: Path) -> list[EpisodeSummary] | None:
    """One curation/training/evaluation trial on a round's pool, recorded in `trial`; its
    specialist's evaluation episodes, or None when it stopped before them."""
    logger = get_run_logger()
    n = trial.trial
    program = curate(str(scaffold.root), digest, params.meta, [t.data() for t in earlier], params.train_base,
                     params.models.max_lora_rank, str(pool_archive),
                     str(pool_archive.parent / "curation" / f"trial-{n}"))
    if isinstance(program, str):
        trial.error = program
        return None
    program = program.model_copy(update={"lora": params.train_budget.apply(program.lora)})
    trial.program = program.model_dump(mode="json")
    dataset = build_sft_dataset(str(pool_archive), program, str(root / "sft"))
    if isinstance(dataset, str):
        trial.error = dataset
        logger.info("trial %d: no training data: %s", n, dataset)
        return None
    try:
        result = train_adapter(dataset, program, str(root / "adapters"), params.train_base, params.train_budget)
    except ProgramError as exc:  # e.g. no example fits max_seq_len: this trial failed, not the loop
        trial.error = f"training refused the program: {exc}"
        logger.warning("trial %d: %s", n, trial.error)
        return None
    trial.dataset, trial.examples, trial.adapter = str(dataset.path), dataset.examples, str(result.adapter_dir)
    trial.final_loss, trial.eval_loss, trial.eval_examples = result.final_loss, result.eval_loss, result.eval_examples
    trial.loss_curve = result.loss_curve
    specialist = str(result.adapter_dir)
    if params.models.backend == "openai":
        try:
            specialist = serve_adapter(params.models, specialist)
        except ModelError as exc:  # e.g. the server cannot see the folder: this trial failed
            trial.error = f"adapter could not be served: {exc}"
            logger.warning("trial %d: %s", n, trial.error)
            return None
    spec_models = params.models.model_copy(update={"specialist": specialist})
    trial.specialist = specialist
    spec_runs = run_episodes(params.specs(str(scaffold.root), params.eval_seeds, spec_models),
                             params, label=f"specialist trial {n}")
    spec_diag = diagnose_traces([s.trace_path for s in spec_runs])
    trial.verdict = gate_candidate(params.eval_seeds, [s.progression for s in base_runs],
                                   [s.progression for s in spec_runs], params.gate,
                                   str(root / "verdicts" / f"{scaffold.hash}-{_name(incumbent_adapter)}-vs-"
                                                           f"{Path(specialist).name}.json"))
    trial.comparison = side_by_side(base_diag, spec_diag, base_runs, spec_runs)
    trial.diagnostics = {"base": trial.comparison["write_search_ratio"]["base"],
                         "specialist": trial.comparison["write_search_ratio"]["specialist"]}
    logger.info("trial %d: %s", n, trial.verdict.reason)
    return spec_runs


def _name(adapter: str | None) -> str:
    return Path(adapter).name if adapter else "base"


def _figures(trials: list[TrialRecord], incumbent: str, base_runs: list[EpisodeSummary],
             spec_runs: dict[int, list[EpisodeSummary]]) -> list:
    """LoRA loss per trial, and memory size over the episode: incumbent vs each specialist."""
    from agent_core.plots import bars_with_intervals, lines
    from agent_core.diagnostics import per_step_means

    def memory_series(runs: list[EpisodeSummary]) -> list[tuple[int, float]]:
        return per_step_means([s.trace_path for s in runs], ("memory_chars",))["memory_chars"]

    loss = {f"trial {t.trial}": list(enumerate(t.loss_curve, 1)) for t in trials if t.loss_curve}
    memory = {incumbent: memory_series(base_runs)}
    memory.update({f"trial {n} specialist": memory_series(runs) for n, runs in spec_runs.items()})
    diag = [(incumbent, t.comparison["growth_chars_per_step"]["base"], t.comparison["write_search_ratio"]["base"])
            for t in trials[:1] if t.comparison]
    diag += [(f"trial {t.trial}", t.comparison["growth_chars_per_step"]["specialist"],
              t.comparison["write_search_ratio"]["specialist"]) for t in trials if t.comparison]
    nan = float("nan")
    return [lines("loss.png", "LoRA training loss per trial", loss, "optimizer step", "loss"),
            lines("memory.png", "memory size over the episode (evaluation seeds)", memory, "step",
                  "memory characters"),
            bars_with_intervals("growth.png", "memory growth per step: incumbent vs specialists",
                                [(k, g, g, g) for k, g, _ in diag if g is not None], "characters per step"),
            bars_with_intervals("write-search.png", "write-to-search ratio: incumbent vs specialists",
                                [(k, r, r, r) if r is not None else (k, nan, nan, nan) for k, _, r in diag],
                                "writes per look-up")]


def learning_curve(trials: list[TrialRecord], incumbent: str) -> list[str]:
    """Markdown lines: per round, the pool's model, the best trial's examples, losses and its
    mean progression on the evaluation seeds beside the incumbent's, with the gate's p-value."""
    lines = ["## Learning curve (expert iteration)", "",
             f"| round | pool played by | trial | examples | final loss | held-out loss | incumbent ({incumbent}) "
             "| specialist | p (Holm) | verdict |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted({t.round for t in trials}):
        done = [t for t in trials if t.round == r and t.verdict is not None]
        if not done:
            why = next((t.error for t in trials if t.round == r and t.error), "no trial evaluated")
            lines.append(f"| {r} | {next(t.pool_model for t in trials if t.round == r)} | - | - | - | - | - | - | - "
                         f"| {why} |")
            continue
        t = max(done, key=lambda t: t.verdict.mean_candidate)
        held = f"{t.eval_loss:.4f}" if t.eval_loss is not None else "-"
        p = t.verdict.adjusted_p if t.verdict.adjusted_p is not None else t.verdict.p_value
        lines.append(f"| {r} | {t.pool_model} | {t.trial} | {t.examples} | {t.final_loss:.4f} | {held} | "
                     f"{t.verdict.mean_incumbent:.4f} | {t.verdict.mean_candidate:.4f} | {p:.3f} | {t.verdict.outcome} |")
    return lines + [""]


def _report(params: TrainingLoopParams, scaffold_hash: str, trials: list[TrialRecord], best: TrialRecord | None,
            incumbent: str, figures: list, curation_root: Path | None = None) -> Path:
    """The report; `curation_root`: where each trial's curator records (`trial-<n>/`) are, whose
    ledgers (the agentic curator's calls, tokens, dollars, stop reason) the report shows."""
    from prefect.runtime import flow_run

    from agent_core.report import ledger_line, ledger_totals
    from agent_core.meta.loop import read_ledgers

    agentic = params.meta.resolved().mode == "agentic" and curation_root is not None
    ledgers = {t.trial: read_ledgers(curation_root / f"trial-{t.trial}", "curator") if agentic else []
               for t in trials}
    rows = [{"trial": t.trial, "round": t.round, "pool_model": t.pool_model, "examples": t.examples, "final_loss": t.final_loss, "eval_loss": t.eval_loss,
             "incumbent": t.verdict.mean_incumbent if t.verdict else None,
             "specialist": t.verdict.mean_candidate if t.verdict else None,
             "promoted": t.verdict.promote if t.verdict else None,
             "outcome": t.verdict.outcome if t.verdict else None,
             "note": t.error or (t.verdict.reason if t.verdict else None),
             **{f"curator_{k}": v for k, v in ledger_totals(ledgers[t.trial]).items()}}
            for t in trials]
    create_table_artifact(rows, key="training-loop-trials", description="training trials")
    lines = [f"# Training loop: {params.game}, scaffold {scaffold_hash}", "",
             f"Incumbent: {incumbent}. Promoted: {best.adapter if best else 'nothing (the incumbent stays)'}", ""]
    if params.rounds > 1:
        lines += learning_curve(trials, incumbent)
    for t in trials:
        lines.append(f"## Trial {t.trial}" + (f" (round {t.round}, pool played by {t.pool_model})"
                                              if params.rounds > 1 else ""))
        if agentic:
            lines += [ledger_line(ledgers[t.trial]), ""]
        if t.error:
            lines += [f"Rejected: {t.error}", ""]
            continue
        held = f", held-out loss {t.eval_loss:.4f} on {t.eval_examples} examples" if t.eval_loss is not None else ""
        lines.append(f"{t.examples} examples, final training loss {t.final_loss:.4f}{held}; "
                     f"gate ({t.verdict.outcome}): {t.verdict.reason}")
        lines += ["", f"| metric | incumbent ({incumbent}) | specialist |", "|---|---|---|"]
        lines += [f"| {k} | {v['base']} | {v['specialist']} |" for k, v in t.comparison.items()]
        lines.append("")
    markdown = "\n".join(lines)
    path = params.root() / "reports" / f"training-loop-{flow_run.get_name() or 'local'}.md"
    inline = write_report(path, markdown, figures)
    create_markdown_artifact(inline, key="training-loop-summary", description="training loop summary")
    return path
