"""Play one episode: environment + scaffold + models -> a JSONL trace and a memory directory."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Literal

from pydantic import BaseModel, ConfigDict, Field

from agent_core.agent import MemoryAgent
from agent_core.models.base import Roles
from agent_core.hooks import require_confinement
from agent_core.memory import MemoryDir
from agent_core.models.config import ModelConfig
from agent_core.records import EpisodeHeader, EpisodeSummary, StepRecord
from agent_core.scaffold import Scaffold
from agent_core.trace import MEMORY_DIRNAME, TRACE_NAME, TraceWriter, read_summary
from agent_core.workspace import RemoteWorkspace, episode_dir
from agent_core.version import episode_digest
from environments import Environment, env_options, make_env

log = logging.getLogger(__name__)


def episode_key(scaffold_hash: str, memory_model: str, action_model: str, game: str, task: str,
                seed: int, max_steps: int, sampling: dict, models: dict | None = None,
                env_options: dict | None = None) -> str:
    """Everything that determines an episode, hashed: the cache key and the episode id.
    `models`: where and how the models run (`ModelConfig.identity`: endpoint, dtype);
    `env_options`: the environment's options; the digest of the code that decides episodes
    (`episode_digest`) is always in."""
    blob = json.dumps([episode_digest(), scaffold_hash, memory_model, action_model, game, task, seed,
                       max_steps, sampling, models or {}, env_options or {}], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def run_episode(
    env: Environment,
    scaffold: Scaffold,
    roles: Roles,
    seed: int,
    max_steps: int,
    out_dir: Path,
    on_step: Callable[[StepRecord], None] | None = None,
    hooks: HooksConfig | None = None,
) -> EpisodeSummary:
    """Play until the game ends or `max_steps`; every step is on disk as soon as it is played.

    A model failure (after the backend's own retries) is recorded in the trace and re-raised:
    the steps played so far stay on disk. A previous incomplete trace in `out_dir` is kept
    beside the new one, never overwritten. `hooks`: how the scaffold's hooks run (confined
    by default; a scaffold with hooks is refused before any step where that cannot be set up).
    """
    if max_steps < 1:
        raise ValueError(f"max_steps must be at least 1, got {max_steps}")
    out_dir = Path(out_dir)
    hooks = hooks or HooksConfig()
    if scaffold.hooks_source is not None and hooks.confinement == "os":
        require_confinement(f"hooks.py of scaffold {scaffold.hash}")  # refused before anything is written
    _set_aside_previous(out_dir)
    cfg = scaffold.config
    memory = MemoryDir(out_dir / MEMORY_DIRNAME, cfg.limits)
    memory.seed_files({f.name: f.initial for f in cfg.memory_files})
    sampling = roles.sampling_for(cfg.model)
    episode_id = episode_key(scaffold.hash, roles.memory.model_id, roles.action.model_id, env.game,
                             env.task, seed, max_steps, sampling.model_dump(), roles.identity,
                             getattr(env, "options", {}))
    header = EpisodeHeader(
        episode_id=episode_id, game=env.game, task=env.task, seed=seed, scaffold_hash=scaffold.hash,
        memory_model=roles.memory.model_id, action_model=roles.action.model_id, max_steps=max_steps,
        sampling=sampling, started_at=datetime.now(timezone.utc).isoformat(),
        hooks_confinement=hooks.confinement if scaffold.hooks_source is not None else None,
        models={k: str(v) for k, v in roles.identity.items()})
    started = time.perf_counter()
    observation = env.reset(seed)
    agent = MemoryAgent(scaffold, roles, memory, env.actions, env.instructions, env.game, episode_id, seed,
                        hooks_confinement=hooks.confinement)
    last_action, reward, total_reward = None, 0.0, 0.0
    steps, invalid_ops, default_actions, ptok, ctok = 0, 0, 0, 0, 0
    end_reason = "max_steps"
    with TraceWriter(out_dir / TRACE_NAME) as trace:
        trace.write(header)
        try:
            for step in range(max_steps):
                t0 = time.perf_counter()
                decision = agent.step(step, observation.text, last_action, reward)
                result = env.step(decision.action_text)
                steps += 1
                reward = result.reward
                total_reward += reward
                invalid_ops += decision.invalid_ops
                default_actions += decision.action_source == "default"
                ptok += sum(c.prompt_tokens for c in decision.calls)
                ctok += sum(c.completion_tokens for c in decision.calls)
                record = StepRecord(
                    episode_id=episode_id, step=step, observation=observation.text,
                    action=result.action, action_text=decision.action_text,
                    action_source=decision.action_source, reward=reward, done=result.done,
                    progression=env.progression, calls=decision.calls,
                    memory_ops=decision.memory_ops, grammars=decision.grammars,
                    hook_errors=decision.hook_errors,
                    invalid_ops=decision.invalid_ops, ops_not_run=decision.ops_not_run,
                    memory_chars=memory.total_chars, memory_lines=memory.total_lines,
                    elapsed_s=time.perf_counter() - t0)
                trace.write(record)
                if on_step:
                    on_step(record)
                observation = result.observation
                last_action = result.action or decision.action_text
                if result.done:
                    end_reason = "done"
                    break
        except Exception as exc:
            trace.write({"kind": "error", "episode_id": episode_id, "step": steps,
                         "message": f"{type(exc).__name__}: {exc}"})
            log.error("episode %s failed at step %d: %s", episode_id, steps, exc)
            raise
        finally:
            agent.close()
        summary = EpisodeSummary(
            episode_id=episode_id, game=env.game, task=env.task, seed=seed,
            scaffold_hash=scaffold.hash, steps=steps, progression=env.progression,
            total_reward=total_reward, invalid_actions=env.invalid_actions,
            invalid_ops=invalid_ops, default_actions=default_actions,
            memory_chars=memory.total_chars, prompt_tokens=ptok, completion_tokens=ctok,
            wall_s=time.perf_counter() - started, end_reason=end_reason,
            trace_path=str(out_dir / TRACE_NAME), memory_path=str(out_dir / MEMORY_DIRNAME),
            hooks_confinement=header.hooks_confinement)
        trace.write(summary)
    log.info("episode %s: %s after %d steps, progression %.3f", episode_id, end_reason, steps,
             summary.progression)
    return summary


def _set_aside_previous(out_dir: Path) -> None:
    """Keep an earlier (e.g. killed) attempt's trace and memory under `attempts/<n>/`."""
    trace = out_dir / TRACE_NAME
    if not trace.exists():
        return
    attempts = out_dir / "attempts"
    n = len(list(attempts.glob("*"))) if attempts.exists() else 0
    dest = attempts / str(n)
    dest.mkdir(parents=True)
    shutil.move(str(trace), dest / TRACE_NAME)
    if (out_dir / MEMORY_DIRNAME).exists():
        shutil.move(str(out_dir / MEMORY_DIRNAME), dest / MEMORY_DIRNAME)


class HooksConfig(BaseModel):
    """How a run runs scaffold hooks (a run's choice, never a scaffold's: the meta-LLM writes
    scaffolds)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    confinement: Literal["os", "none"] = Field(
        "os", description="`os`: hooks run under the OS sandbox (Landlock + seccomp, no capabilities) and "
        "are refused where it cannot be set up; `none`: hooks run without it, an explicit choice recorded "
        "in every episode header and report.")


class EpisodeSpec(BaseModel):
    """Everything that determines one episode, plus where its files go."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    game: str
    task: str
    seed: int = Field(ge=0)
    max_steps: int = Field(ge=1)
    scaffold_dir: str = Field(description="Scaffold directory.")
    models: ModelConfig
    workspace: str = Field(description="Local workspace root; the episode lives under episodes/.")
    remote: str | None = Field(None, description="The workspace's fsspec URL when it is remote "
                               "(`workspace` is then its local mirror).")
    hooks: HooksConfig = Field(default_factory=HooksConfig, description="How the scaffold's hooks run.")

    def key(self) -> str:
        scaffold = Scaffold.load(self.scaffold_dir)
        memory_id, action_id = self.models.ids()
        sampling = self.models.sampling_for(scaffold.config.model)
        return episode_key(scaffold.hash, memory_id, action_id, self.game, self.task, self.seed,
                           self.max_steps, sampling.model_dump(), self.models.identity(),
                           env_options(self.game, self.task))

    def out_dir(self) -> Path:
        return episode_dir(Path(self.workspace), self.game, self.key())


def finished_summary(spec: EpisodeSpec) -> EpisodeSummary | None:
    """The episode cache: the summary of `spec`'s finished trace, if it is on disk (or, for a
    remote workspace, at its URL: then it is pulled into the mirror). The episode directory
    is named by the episode key, so a finished trace there is the result."""
    out = spec.out_dir()
    summary = read_summary(out)
    if summary is None and spec.remote and read_summary_remote(spec):
        summary = read_summary(out)
    if summary is None:
        return None
    # paths as they are here (another machine may have played it)
    return summary.model_copy(update={"trace_path": str(out / TRACE_NAME), "memory_path": str(out / MEMORY_DIRNAME)})


def read_summary_remote(spec: EpisodeSpec) -> bool:
    """Pull a finished episode from the remote workspace; False when it has none."""
    remote = RemoteWorkspace(spec.remote, Path(spec.workspace))
    out = spec.out_dir()
    if not remote.exists(out / TRACE_NAME):
        return False
    if out.exists():
        _set_aside_previous(out)  # a local unfinished attempt: keep it beside
    return remote.pull(out)


def play(spec: EpisodeSpec, on_step: Callable[[StepRecord], None] | None = None) -> EpisodeSummary:
    """Play `spec`'s episode, or return its finished summary: an episode is never played twice."""
    done = finished_summary(spec)
    if done is not None:
        log.info("episode %s already played: reusing %s", done.episode_id, spec.out_dir())
        return done
    out = spec.out_dir()
    env = make_env(spec.game, spec.task, max_steps=spec.max_steps)
    try:
        summary = run_episode(env, Scaffold.load(spec.scaffold_dir), spec.models.build(), spec.seed,
                              spec.max_steps, out, on_step, hooks=spec.hooks)
    finally:
        env.close()
    if summary.episode_id != out.name:  # the cache would never find it: a bug, said at once
        raise RuntimeError(f"episode {summary.episode_id} was played in the folder of key {out.name}: "
                           "EpisodeSpec.key and run_episode must derive the same key")
    if spec.remote:
        RemoteWorkspace(spec.remote, Path(spec.workspace)).push(out)
    return summary
