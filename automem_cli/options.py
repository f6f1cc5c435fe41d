"""The options commands share, each declared once, and the groups of them every command that
plays episodes takes.

An option is a `typing.Annotated` alias a command uses as its parameter's type (the default
stays with the command). A group is a frozen dataclass of such fields: a command parameter
annotated with one stands for all of its options (`with_groups` spells them out for typer and
hands the command the dataclass).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from enum import Enum
from pathlib import Path
from typing import Annotated, Callable, Optional

import typer

from agent_core.models.devices import DEVICE_HELP, INFERENCE_DTYPE
from agent_core.records import check_temperature, check_top_p


def _checked(check: Callable[[float], float]) -> Callable[[Optional[float]], Optional[float]]:
    """An option callback that applies one of the config's validators when the option is
    given, so a bad value fails before anything runs, with the validator's message."""

    def callback(value: Optional[float]) -> Optional[float]:
        try:
            return value if value is None else check(value)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None

    return callback


class Dtype(str, Enum):
    """The local model's weights at inference (`LocalModel`'s dtypes)."""

    bfloat16 = "bfloat16"
    float32 = "float32"


class Format(str, Enum):
    """How a command prints rows."""

    table = "table"
    csv = "csv"
    json = "json"


# --- where ---
Workspace = Annotated[Optional[Path], typer.Option(help="Workspace (default $AUTOMEM_WORKSPACE or ./automem-runs).")]
Archive = Annotated[Optional[Path], typer.Option(help="Archive directory (default: <workspace>/archive).")]
Dask = Annotated[Optional[str], typer.Option("--dask", help="Play the episodes on an existing Dask cluster: its "
                                             "scheduler, e.g. tcp://host:8786 (needs a Prefect server in PREFECT_API_URL).")]
Concurrency = Annotated[int, typer.Option(min=1, help="Episodes in flight at once.")]
HooksConfinement = Annotated[str, typer.Option(help="How scaffold hooks run: `os` (the OS sandbox: Landlock + seccomp; "
                             "refused where it cannot be set up) or `none` (unconfined, an explicit choice recorded "
                             "in every episode header and report).")]

# --- which game ---
Game = Annotated[str, typer.Argument(help="Game: crafter, minihack, nethack, tiny.")]
Task = Annotated[Optional[str], typer.Option(help="Task within the game (default: the game's first).")]
Seed = Annotated[int, typer.Option(min=0, help="Game seed.")]
Seeds = Annotated[str, typer.Option(help="Seeds, e.g. 0-3 or 0,2,5.")]
Steps = Annotated[int, typer.Option(min=1, help="Step budget per episode.")]
GameTask = Annotated[str, typer.Option("--env", help="`game` or `game/task`.")]
GameTasks = Annotated[list[str], typer.Option("--env", help="`game` or `game/task` (repeatable).")]

# --- the models ---
BaseUrl = Annotated[Optional[str], typer.Option(help="OpenAI-compatible model server, e.g. vLLM's "
                                                "http://host:8000/v1 (default: the local model).")]
ServedModel = Annotated[Optional[str], typer.Option("--model", help="Served model name (with --base-url).")]
MaxTokens = Annotated[Optional[int], typer.Option(min=1, help="Cap on tokens per reply; default: the scaffold's.")]
Constrain = Annotated[str, typer.Option(help="on: decode every reply under the command grammar (vLLM structured "
                                        "outputs); off: free text, parsed forgivingly.")]
Temperature = Annotated[Optional[float], typer.Option(
    callback=_checked(check_temperature), help="Sampling temperature over the scaffold's (0: greedy, at most 2); "
    "each call is seeded from the episode's seed, step and call. Part of the episode key.")]
TopP = Annotated[Optional[float], typer.Option(
    callback=_checked(check_top_p), help="Nucleus-sampling mass over the scaffold's, in (0, 1]. "
    "Part of the episode key.")]
SamplingSeed = Annotated[Optional[int], typer.Option(
    min=0, help="Sampling seed over the scaffold's: mixed into every call's seed, so the same game seed "
    "plays another sample. Part of the episode key.")]
Device = Annotated[str, typer.Option(help=f"Local model's device: {DEVICE_HELP}.")]
DtypeOption = Annotated[Dtype, typer.Option("--dtype", help=f"Local model's weights: {INFERENCE_DTYPE} (the "
                        "default; decoding is batch-invariant in it) or float32.")]

# --- output ---
FormatOption = Annotated[Format, typer.Option("--format", help="table (records, one per block, where a table "
                         "would not fit the terminal), csv or json.")]


@dataclasses.dataclass(frozen=True)
class ModelOptions:
    """The model options of every command that plays episodes."""

    base_url: BaseUrl = None
    model: ServedModel = None
    max_tokens: MaxTokens = None
    constrain: Constrain = "on"
    temperature: Temperature = None
    top_p: TopP = None
    sampling_seed: SamplingSeed = None
    device: Device = "auto"

    def config(self, specialist: Optional[str] = None):
        """The `ModelConfig` these options describe (ValueError when they do not fit)."""
        from agent_core.models.config import ModelConfig

        return ModelConfig(backend="openai" if self.base_url else "local", base_url=self.base_url,
                           model=self.model, specialist=specialist, max_tokens=self.max_tokens,
                           constrain=self.constrain, device=self.device, temperature=self.temperature,
                           top_p=self.top_p, seed=self.sampling_seed)


@dataclasses.dataclass(frozen=True)
class RunOptions(ModelOptions):
    """The model options, and where and how a flow plays its episodes."""

    concurrency: Concurrency = 4
    hooks_confinement: HooksConfinement = "os"
    workspace: Workspace = None
    dask: Dask = None

    def flow_params(self) -> dict:
        """The parameters every flow that plays episodes shares; a Dask cluster is checked now
        (reachable, a Prefect server set), before the flow starts."""
        from flows.runners import RunnerConfig

        runner = RunnerConfig(kind="dask", address=self.dask) if self.dask else RunnerConfig()
        runner.check()
        return dict(concurrency=self.concurrency, runner=runner, models=self.config(),
                    workspace=str(self.workspace) if self.workspace else None,
                    hooks={"confinement": self.hooks_confinement})


@dataclasses.dataclass(frozen=True)
class GamesOptions:
    """Several games on the same seeds (a command's own defaults: `GamesOptions(seeds=...)`)."""

    env: GameTasks = ("crafter",)
    seeds: Seeds = "0-1"
    steps: Steps = 10

    def flow_params(self) -> dict:
        """The games, seeds and step budget as a flow's parameters."""
        return dict(games=list(self.env), seeds=parse_seeds(self.seeds), max_steps=self.steps)


def parse_seeds(text: str) -> list[int]:
    """`0-3` -> [0, 1, 2, 3]; `0,2,5` -> [0, 2, 5]."""
    seeds: list[int] = []
    try:
        for part in text.split(","):
            lo, sep, hi = part.strip().partition("-")
            seeds += list(range(int(lo), int(hi) + 1)) if sep else [int(lo)]
    except ValueError:
        raise typer.BadParameter(f"seeds look like 0-3 or 0,2,5 (non-negative integers), got {text!r}") from None
    if not seeds or any(s < 0 for s in seeds):
        raise typer.BadParameter(f"seeds must be non-negative integers, got {text!r}")
    return seeds


def with_groups(command: Callable) -> Callable:
    """`command` with each parameter annotated with an option group (`ModelOptions`,
    `RunOptions`, `GamesOptions`) spelled out as the group's options, in its place, their
    defaults those of the parameter's default (else the group's); the command is called with
    the group built from them."""
    signature = inspect.signature(command, eval_str=True)
    groups: dict[str, type] = {}
    params: list[inspect.Parameter] = []
    for p in signature.parameters.values():
        if dataclasses.is_dataclass(p.annotation):
            groups[p.name] = p.annotation
            defaults = p.annotation() if p.default is p.empty else p.default
            hints = typing.get_type_hints(p.annotation, include_extras=True)
            params += [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=getattr(defaults, f.name),
                                         annotation=hints[f.name]) for f in dataclasses.fields(p.annotation)]
        else:
            params.append(p.replace(kind=inspect.Parameter.KEYWORD_ONLY))

    @functools.wraps(command)
    def wrapper(**kwargs):
        for name, group in groups.items():
            if name not in kwargs:
                kwargs[name] = group(**{f.name: kwargs.pop(f.name) for f in dataclasses.fields(group)
                                        if f.name in kwargs})
        return command(**kwargs)

    wrapper.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in params}
    return wrapper
