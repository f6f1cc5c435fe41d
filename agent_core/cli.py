"""`automem` command line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(no_args_is_help=True, add_completion=False, help="AutoMem: LLM agents that learn to manage their memory.")
env_app = typer.Typer(no_args_is_help=True, help="Look at a game by hand.")
trace_app = typer.Typer(no_args_is_help=True, help="Read episode traces.")
app.add_typer(env_app, name="env")
app.add_typer(trace_app, name="trace")
console = Console()


def _fail(message: str) -> None:
    console.print(f"[red]error:[/red] {message}")
    raise typer.Exit(2)


def _make_env(game: str, task: Optional[str], steps: Optional[int] = None):
    from environments import EnvError, make_env

    try:
        return make_env(game, task, **({"max_steps": steps} if steps else {}))
    except EnvError as exc:
        _fail(str(exc))


@env_app.command("show")
def env_show(game: str, seed: int = typer.Option(0, min=0), task: Optional[str] = None) -> None:
    """Print the first observation and the action vocabulary."""
    env = _make_env(game, task)
    console.print(env.reset(seed).text, markup=False)
    console.print(f"\n[bold]actions[/bold]: {', '.join(env.actions)}", markup=True)


@env_app.command("play")
def env_play(game: str, seed: int = typer.Option(0, min=0), task: Optional[str] = None) -> None:
    """Play by typing actions (empty line or Ctrl-D quits)."""
    env = _make_env(game, task)
    console.print(env.reset(seed).text, markup=False)
    while True:
        try:
            action = input(f"\naction ({len(env.actions)} valid, '?' lists)> ").strip()
        except EOFError:
            break
        if not action:
            break
        if action == "?":
            console.print(", ".join(env.actions), markup=False)
            continue
        result = env.step(action)
        console.print(result.observation.text, markup=False)
        console.print(f"[dim]reward {result.reward}  progression {env.progression:.3f}[/dim]")
        if result.done:
            console.print("[bold]episode over[/bold]")
            break


@app.command()
def play(
    env: str = typer.Option("crafter", "--env", help="Game: crafter, minihack, nethack, tiny."),
    task: Optional[str] = typer.Option(None, help="Task within the game (default: the game's first)."),
    seed: int = typer.Option(0, min=0),
    steps: int = typer.Option(30, min=1, help="Step budget."),
    scaffold: Optional[Path] = typer.Option(None, help="Scaffold directory (default: the game's v0)."),
    base_url: Optional[str] = typer.Option(None, help="OpenAI-compatible server, e.g. vLLM."),
    model: Optional[str] = typer.Option(None, help="Served model name (with --base-url)."),
    specialist: Optional[str] = typer.Option(None, help="Memory-specialist adapter name (served) or path (local)."),
    workspace: Optional[Path] = typer.Option(None, help="Workspace (default $AUTOMEM_WORKSPACE or ./automem-runs)."),
) -> None:
    """Play one episode and print where the trace is and its diagnostics."""
    from rich.progress import Progress

    from agent_core.diagnostics import diagnose
    from agent_core.episode import episode_key, run_episode
    from agent_core.models.base import ModelError
    from agent_core.models.config import ModelConfig
    from agent_core.scaffold import Scaffold, ScaffoldError
    from agent_core.trace import read_trace
    from agent_core.workspace import episode_dir, workspace_root

    game = _make_env(env, task, steps)
    try:
        sc = Scaffold(scaffold) if scaffold else Scaffold.builtin(game.game)
    except ScaffoldError as exc:
        _fail(str(exc))
    try:
        models = ModelConfig(backend="openai" if base_url else "local", base_url=base_url,
                             model=model, specialist=specialist)
        models.check()
        roles = models.build()
    except (ValueError, ModelError, OSError) as exc:
        _fail(str(exc))
    key = episode_key(sc.hash, roles.memory.model_id, roles.action.model_id, game.game, game.task,
                      seed, steps, sc.config.model.model_dump())
    out = episode_dir(workspace_root(workspace), game.game, key)
    with Progress(console=console) as bar:
        job = bar.add_task(f"{game.game}/{game.task} seed {seed}", total=steps)
        try:
            summary = run_episode(game, sc, roles, seed, steps, out,
                                  on_step=lambda r: bar.update(job, advance=1,
                                                               description=f"step {r.step} {r.action_text[:20]!r} prog {r.progression:.2f}"))
        except ModelError as exc:
            _fail(f"{exc}\nthe trace so far is in {out}")
    console.print(f"trace:  {summary.trace_path}\nmemory: {summary.memory_path}")
    _print_diagnostics(diagnose(read_trace(summary.trace_path)).model_dump(exclude={"progression_curve"}))


def _print_diagnostics(d: dict) -> None:
    table = Table("metric", "value", title="diagnostics")
    for k, v in d.items():
        table.add_row(k, f"{v:.3f}" if isinstance(v, float) else str(v))
    console.print(table)


@trace_app.command("show")
def trace_show(path: Path, full: bool = typer.Option(False, help="Show whole replies and observations.")) -> None:
    """A readable step-by-step view of a trace."""
    from agent_core.diagnostics import diagnose
    from agent_core.trace import TraceError, read_trace

    try:
        trace = read_trace(path)
    except TraceError as exc:
        _fail(str(exc))
    h = trace.header
    console.print(f"[bold]{h.game}/{h.task}[/bold] seed {h.seed} scaffold {h.scaffold_hash} "
                  f"memory={h.memory_model} action={h.action_model}")
    cut = (lambda s: s) if full else (lambda s: s if len(s) <= 300 else s[:300] + " ...")
    for s in trace.steps:
        console.rule(f"step {s.step}  action {s.action_text!r} ({s.action_source})  "
                     f"progression {s.progression:.3f}  memory {s.memory_chars} chars")
        console.print(cut(s.observation), markup=False, style="dim")
        for c in s.calls:
            console.print(f"[cyan]{c.routine}/{c.role}[/cyan] ({c.prompt_tokens}+{c.completion_tokens} tok, {c.latency_s:.2f}s)")
            console.print(cut(c.reply), markup=False)
        for op in s.memory_ops:
            mark = "[green]ok[/green]" if op.ok else "[red]x[/red]"
            console.print(f"  {mark} {op.op} {json.dumps(op.args)[:120]} -> {cut(op.result)[:160]}", markup=True, highlight=False)
    if trace.error:
        console.print(f"[red]episode failed:[/red] {trace.error}")
    elif not trace.complete:
        console.print("[yellow]trace is incomplete (the run was interrupted)[/yellow]")
    _print_diagnostics(diagnose(trace).model_dump(exclude={"progression_curve"}))


@app.command()
def serve(
    host: str = "127.0.0.1",
    port: int = 8000,
    adapter: list[str] = typer.Option([], help="NAME=PATH of a peft adapter to serve (repeatable)."),
) -> None:
    """A local OpenAI-compatible server (vLLM's surface) over the local model."""
    from agent_core.models.server import serve as run_server

    adapters = {}
    for item in adapter:
        name, sep, p = item.partition("=")
        if not sep or not name or not p:
            _fail(f"--adapter takes NAME=PATH, got {item!r}")
        adapters[name] = Path(p)
    run_server(host=host, port=port, adapters=adapters)


@app.command()
def run() -> None:
    """The main job on the embedded defaults (what `make run` does)."""
    play(env="crafter", task=None, seed=0, steps=5, scaffold=None, base_url=None, model=None,
         specialist=None, workspace=None)


if __name__ == "__main__":
    app()
