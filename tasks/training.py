"""Training-loop tasks: curate, build the SFT dataset, train the adapter, serve it."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from agent_core.meta.config import MetaLLMConfig
from agent_core.meta.loop import archive_ledgers
from agent_core.scaffold import Scaffold
from agent_core.training.curator import make_curator
from agent_core.training.dataset import DatasetInfo, build_dataset
from agent_core.training.lora import StepLog, TrainResult, train_lora
from agent_core.models.config import ModelConfig
from agent_core.training.program import (CurationProgram, ProgramError, TrainingBudget, check_served_lora,
                                         pool_digest)
from tasks.episodes import retry_on_transient_error



@task(name="digest_pool")
def digest_pool(archive_root: str) -> dict:
    return pool_digest(archive_root)


@task(name="curate", retries=2, retry_delay_seconds=[30, 120], retry_condition_fn=retry_on_transient_error)
def curate(scaffold_dir: str, digest: dict, meta: MetaLLMConfig, trials: list[dict],
           base_path: str | None, max_lora_rank: int | None = None, archive_root: str | None = None,
           record_dir: str | None = None) -> CurationProgram | str:
    """The next trial's curation program, or the reason it was rejected (fed back).
    `max_lora_rank`: the model server's limit (programs it cannot serve are refused);
    `archive_root`, `record_dir`: the pool's archive and where an agentic curator's trace goes."""
    curator = make_curator(meta, Path(base_path) if base_path else None,
                           Path(archive_root) if archive_root else None, Path(record_dir) if record_dir else None)
    scaffold = Scaffold.load(scaffold_dir)
    try:
        program = curator.program(scaffold, digest, trials)
        if max_lora_rank is not None:
            check_served_lora(program.lora, max_lora_rank)
        return program
    except ProgramError as exc:
        return f"program rejected: {exc.reason}"
    finally:  # the agentic curator's ledger, whatever became of its program
        if archive_root and record_dir:
            games = sorted(digest.get("games") or {})  # the pool's game, as its episodes name it
            archive_ledgers(record_dir, archive_root, role="curator", mode=meta.resolved().mode,
                            game=games[0] if len(games) == 1 else scaffold.config.game,
                            scaffold_hash=scaffold.hash, trial=len(trials))


@task(name="build_sft_dataset")
def build_sft_dataset(archive_root: str, program: CurationProgram, out_root: str) -> DatasetInfo | str:
    """The content-addressed dataset, or why there is none (nothing trains on empty data)."""
    try:
        return build_dataset(archive_root, program, out_root)
    except ProgramError as exc:
        return exc.reason


#: the module that trains an adapter: its import closure's digest is part of adapter names
TRAINING_CODE = "agent_core.training.lora"


def adapter_name(dataset: DatasetInfo, program: CurationProgram, base: Path, device: str,
                 training_code: str | None = None) -> str:
    """Content-addressed: the same data, settings, base weights and kind of device (whose
    dtype and kernels decide the numbers) give the same adapter, so a trial whose program
    and data are unchanged is not retrained, and a served name never points at different
    weights (the base is named by a digest of its weights, not its folder name). The training
    code's digest is in too (`training_code`, by default the digest of `TRAINING_CODE`'s import
    closure): an adapter trained by changed code is another adapter."""
    from agent_core.models.devices import kind, training_dtype
    from agent_core.models.weights import weights_digest
    from agent_core.version import code_digest

    blob = json.dumps([dataset.digest, program.lora.model_dump(mode="json"), base.name, weights_digest(base),
                       kind(device), training_dtype(device), training_code or code_digest(TRAINING_CODE)],
                      sort_keys=True)
    return "mem-" + hashlib.sha256(blob.encode()).hexdigest()[:12]


@task(name="train_adapter")
def train_adapter(dataset: DatasetInfo, program: CurationProgram, adapters_root: str,
                  base_path: str | None, budget: TrainingBudget) -> TrainResult:
    """Train (or reuse) the trial's adapter on the budget's device."""
    logger = get_run_logger()
    from agent_core.models.devices import resolve_device
    from agent_core.models.weights import local_model_path

    device = resolve_device(budget.device)
    base = Path(base_path) if base_path else local_model_path()
    out = Path(adapters_root) / adapter_name(dataset, program, base, device)
    result_file = out / "train_result.json"
    if result_file.is_file():
        logger.info("adapter %s already trained: reused", out.name)
        return TrainResult.model_validate_json(result_file.read_text())
    if out.exists():  # renamed into place but its result never written (killed): set aside
        out.rename(out.with_name(f"{out.name}.incomplete-{int(time.time())}"))
    progress = create_progress_artifact(0.0, description=f"training {out.name}")

    def report(s: StepLog) -> None:
        logger.info("train/step %d/%d epoch %d loss %.4f lr %.2e (%.1f s)", s.step, s.total_steps,
                    s.epoch, s.loss, s.lr, s.elapsed_s)
        update_progress_artifact(progress, 100.0 * s.step / max(s.total_steps, 1))

    result = train_lora(dataset.path, program.lora, out, base_path=base, progress=report, device=device,
                        gradient_checkpointing=budget.gradient_checkpointing)
    result_file.write_text(result.model_dump_json(indent=2))
    logger.info("adapter %s: %d steps on %s (%s), final loss %.4f", out.name, result.steps, result.device,
                result.dtype, result.final_loss)
    return result


@task(name="serve_adapter", retries=2, retry_delay_seconds=[10, 30], retry_condition_fn=retry_on_transient_error)
def serve_adapter(models: ModelConfig, adapter_dir: str) -> str:
    """Load the adapter into the OpenAI-compatible server (vLLM's /v1/load_lora_adapter)
    under its content-addressed name, at the path the server sees (`models.server_paths`)."""
    from agent_core.models.openai_client import ensure_adapter

    return ensure_adapter(models.base_url, adapter_dir, models.server_path(adapter_dir))
