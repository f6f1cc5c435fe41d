"""A long synthetic tiny-game trace with a planted memory defect, written through the real
records, trace writer and `MemoryDir` (so replay, archive and bundle read it as they read a
played episode)."""

from __future__ import annotations

from pathlib import Path

from agent_core.memory import MemoryDir
from agent_core.records import EpisodeHeader, EpisodeSummary, Message, MemoryOp, ModelCall, SamplingParams, \
    StepRecord
from agent_core.scaffold import Scaffold
from agent_core.trace import MEMORY_DIRNAME, TRACE_NAME, TraceWriter

DUPLICATE_TEXT = "saw: a wall to the north"


def write_synthetic_trace(out_dir: Path, scaffold: Scaffold, steps: int = 2000, defect_at: int = 1400,
                          progress_until: int = 300, seed: int = 0, episode_id: str = "synthetic2000") -> Path:
    """`steps` steps: progression rises until `progress_until`, then stays flat; from step
    `defect_at` on, each LOG writes the same line three times (a storm of duplicate writes)."""
    out_dir = Path(out_dir)
    memory = MemoryDir(out_dir / MEMORY_DIRNAME, scaffold.config.limits)
    memory.seed_files({f.name: f.initial for f in scaffold.config.memory_files})
    path = out_dir / TRACE_NAME
    with TraceWriter(path) as w:
        w.write(EpisodeHeader(episode_id=episode_id, game="tiny", task="tiny", seed=seed,
                              scaffold_hash=scaffold.hash, memory_model="synthetic", action_model="synthetic",
                              max_steps=steps, sampling=SamplingParams(), started_at="2026-01-01T00:00:00"))
        progression = 0.0
        for step in range(steps):
            if step < progress_until:
                progression = round((step + 1) / (2 * progress_until), 6)
            observation = f"Step {step}. You are in room {step % 7}. Exits: north, east."
            texts = [DUPLICATE_TEXT] * 3 if step >= defect_at else [f"step {step}: went east from room {step % 7}"]
            call_id = f"{episode_id}-{step}-0"
            ops = []
            for text in texts:
                file = "map.md" if step >= defect_at else "action_log.md"
                before = memory.text(file) or ""
                dup = text in before
                res = memory.apply("append", {"file": file, "text": text})
                ops.append(MemoryOp(call_id=call_id, routine="log", op="append", args={"file": file, "text": text},
                                    ok=res.ok, result=res.text, delta_chars=len(memory.text(file) or "") - len(before),
                                    duplicate=dup))
            reply = "".join(f"<|APPEND|>{o.args['file']}|{o.args['text']}<|END|>" for o in ops) + "<|DONE|>"
            calls = [ModelCall(call_id=call_id, routine="log", role="memory", model="synthetic", messages_digest="x",
                               window_start=1, context_end=2, new_messages=[Message(role="user", content=observation)],
                               reply=reply),
                     ModelCall(call_id=f"{episode_id}-{step}-1", routine="plan", role="memory", model="synthetic",
                               messages_digest="y", window_start=1, context_end=3,
                               new_messages=[Message(role="user", content="Plan.")], reply="<|ACTION|>east<|END|>")]
            w.write(StepRecord(episode_id=episode_id, step=step, observation=observation, action="east",
                               action_text="east", action_source="model", reward=0.0, done=step == steps - 1,
                               progression=progression, calls=calls, memory_ops=ops, invalid_ops=0,
                               memory_chars=memory.total_chars, memory_lines=memory.total_lines, elapsed_s=0.01))
        w.write(EpisodeSummary(episode_id=episode_id, game="tiny", task="tiny", seed=seed, scaffold_hash=scaffold.hash,
                               steps=steps, progression=progression, total_reward=0.0, invalid_actions=0,
                               invalid_ops=0, default_actions=0, memory_chars=memory.total_chars, prompt_tokens=0,
                               completion_tokens=0, wall_s=1.0, end_reason="max_steps", trace_path=str(path),
                               memory_path=str(memory.root)))
    return path
