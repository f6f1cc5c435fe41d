"""Typed records of the outer loops: one scaffold-loop iteration, one training trial. Flows
build them; reports, curators and flow results read them (as plain data, `model_dump`)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from agent_core.gate import GateVerdict


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")

    def data(self) -> dict[str, Any]:
        """Plain data without the fields that were never set (None)."""
        return self.model_dump(mode="json", exclude_none=True)


class IterationRecord(_Record):
    """One iteration of the scaffold loop."""

    iteration: int
    incumbent: str = Field(description="Hash of the incumbent scaffold this iteration started from.")
    reviewer: str
    attempts: list[dict[str, Any]] = Field(default_factory=list, description="The reviewer's attempts and their fate.")
    candidate: str | None = Field(None, description="Hash of the valid candidate, if one was written.")
    verdict: Literal["promoted", "kept incumbent", "kept incumbent (worse)", "no seed differs", "underpowered",
                     "no valid candidate"] = Field(
        description="The gate's outcome (`agent_core.gate`: worse = lost on every seed that differs; "
        "underpowered = won every seed that differs, but the ties left too few of them for alpha).")
    reason: str = ""


class TrialRecord(_Record):
    """One curation/training/evaluation trial of the training loop."""

    trial: int
    round: int = Field(0, description="The expert-iteration round the trial belongs to (its pool was "
                       "played by that round's memory model).")
    pool_model: str = Field("base", description="The memory model that played the trial's pool: base, or "
                            "the specialist of an earlier round (its adapter).")
    error: str | None = Field(None, description="Why the trial stopped before a verdict.")
    program: dict[str, Any] | None = Field(None, description="The curation program, as trained.")
    dataset: str | None = None
    examples: int | None = None
    adapter: str | None = None
    final_loss: float | None = None
    eval_loss: float | None = Field(None, description="Loss on held-out examples after training.")
    eval_examples: int | None = None
    loss_curve: list[float] | None = None
    specialist: str | None = Field(None, description="The adapter as the agent addresses it (path or served name).")
    verdict: GateVerdict | None = None
    comparison: dict[str, dict[str, float | None]] | None = None
    diagnostics: dict[str, float | None] | None = None
