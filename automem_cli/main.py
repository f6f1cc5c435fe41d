"""`automem` command line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

# Before torch can be imported: offline, and OpenMP threads that sleep when idle.
from agent_core.models.batching import DEFAULT_MAX_BATCH  # noqa: E402
from agent_core.models.weights import set_runtime_env  # noqa: E402

set_runtime_env()

# The options commands share, declared once (`options.py`), and the shared output (`output.py`).
from automem_cli.options import (  # noqa: E402
    Archive, Device, Dtype, DtypeOption, Format, FormatOption, Game, GamesOptions, GameTask, HooksConfinement,
    ModelOptions, RunOptions, Seed, Seeds, Steps, Task, Workspace, parse_seeds, with_groups)
from automem_cli.output import print_rows, write_csv, write_json  # noqa: E402

app = typer.Typer(no_args_is_help=True, add_completion=False, help="AutoMem: LLM agents that learn to manage their memory.")
env_app = typer.Typer(no_args_is_help=True, help="Look at a game by hand.")
trace_app = typer.Typer(no_args_is_help=True, help="Read one episode trace.")
traces_app = typer.Typer(no_args_is_help=True, help="Query the Parquet trace archive.")
app.add_typer(env_app, name="env")
app.add_typer(trace_app, name="trace")
app.add_typer(traces_app, name="traces")
console = Console()
err_console = Console(stderr=True)  # notes beside csv or json on stdout


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
def env_show(game: Game, seed: Seed = 0, task: Task = None) -> None:
    """Print the first observation and the action vocabulary."""
    env = _make_env(game, task)
    console.print(env.reset(seed).text, markup=False)
    console.print(f"\n[bold]actions[/bold]: {', '.join(env.actions)}", markup=True)


@env_app.command("play")
def env_play(game: Game, seed: Seed = 0, task: Task = None) -> None:
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
@with_groups
def play(
    env: str = typer.Option("crafter", "--env", help="Game: crafter, minihack, nethack, tiny."),
    task: Task = None,
    seed: Seed = 0,
    steps: Steps = 30,
    scaffold: Optional[Path] = typer.Option(None, help="Scaffold directory (default: the game's v0)."),
    specialist: Optional[str] = typer.Option(None, help="Memory-specialist adapter name (served) or path (local)."),
    models: ModelOptions = ModelOptions(),
    hooks_confinement: HooksConfinement = "os",
    workspace: Workspace = None,
) -> None:
    """Play one episode and print where the trace is and its diagnostics. The episode's folder
    is named by its key (the same as its header's, every option included); a finished episode
    there is reused, not played again."""
    from rich.progress import Progress

    from agent_core.diagnostics import diagnose
    from agent_core.episode import EpisodeSpec, HooksConfig, finished_summary
    from agent_core.episode import play as play_episode
    from agent_core.models.base import ModelError
    from agent_core.scaffold import Scaffold, ScaffoldError
    from agent_core.trace import read_trace
    from agent_core.workspace import workspace_root

    game = _make_env(env, task, steps)
    game.close()  # the names are checked; the episode makes its own
    try:
        sc = Scaffold(scaffold) if scaffold else Scaffold.builtin(game.game)
    except ScaffoldError as exc:
        _fail(str(exc))
    try:
        config = models.config(specialist)
        config.check()
        spec = EpisodeSpec(game=game.game, task=game.task, seed=seed, max_steps=steps, scaffold_dir=str(sc.root),
                           models=config, workspace=str(workspace_root(workspace)),
                           hooks=HooksConfig(confinement=hooks_confinement))
        out = spec.out_dir()
    except (ValueError, ModelError, OSError) as exc:
        _fail(str(exc))
    summary = finished_summary(spec)
    if summary is not None:
        console.print(f"episode {summary.episode_id} already played: reusing it")
    else:
        with Progress(console=console) as bar:
            job = bar.add_task(f"{game.game}/{game.task} seed {seed}", total=steps)
            try:
                summary = play_episode(spec, on_step=lambda r: bar.update(
                    job, advance=1, description=f"step {r.step} {r.action_text[:20]!r} prog {r.progression:.2f}"))
            except ModelError as exc:
                _fail(f"{exc}\nthe trace so far is in {out}")
            except (ValueError, OSError) as exc:
                _fail(str(exc))
    console.print(f"trace:  {summary.trace_path}\nmemory: {summary.memory_path}")
    _print_diagnostics(diagnose(read_trace(summary.trace_path)).model_dump(exclude={"progression_curve"}))


def _print_diagnostics(d: dict) -> None:
    print_rows(console, ("metric", "value"), ((k, f"{v:.3f}" if isinstance(v, float) else v) for k, v in d.items()),
               title="diagnostics")


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


@trace_app.command("review")
def trace_review(path: Path, max_chars: int = typer.Option(1500, min=100, help="Characters per tool result.")) -> None:
    """An agentic review's trace (`reviews/<key>/agent-N.jsonl`): every call, tool result and
    how it ended."""
    from agent_core.meta.loop import render_review_trace

    if not Path(path).is_file():
        _fail(f"no review trace at {path}")
    try:
        text = render_review_trace(path, max_chars)
    except (ValueError, KeyError) as exc:
        _fail(f"{path} is not a review trace: {exc}")
    console.print(text, markup=False, highlight=False)


@traces_app.command("query")
def traces_query(
    sql: str = typer.Argument(..., help="One SELECT over the views episodes, steps, calls, memory_ops."),
    workspace: Workspace = None,
    archive: Archive = None,
    limit: int = typer.Option(50, min=1, help="Rows to print."),
    timeout: float = typer.Option(60.0, help="Seconds before the query is stopped."),
    fmt: FormatOption = Format.table,
) -> None:
    """Run read-only SQL (DuckDB) over the archive. Partition columns: game, scaffold_hash."""
    from agent_core.archive import QueryError, run_query
    from agent_core.workspace import workspace_root

    try:
        result = run_query(archive or workspace_root(workspace) / "archive", sql, timeout_s=timeout)
    except QueryError as exc:
        _fail(str(exc))
    rows = [list(row.values()) for row in result.slice(0, limit).to_pylist()]
    if fmt is Format.table:
        print_rows(console, result.column_names, rows, cut=80)
    else:
        (write_csv if fmt is Format.csv else write_json)(result.column_names, rows)
    if result.num_rows > limit:
        (console if fmt is Format.table else err_console).print(
            f"[dim]{result.num_rows - limit} more rows (--limit)[/dim]")


@app.command()
def serve(
    host: str = "127.0.0.1",
    port: int = 8000,
    adapter: list[str] = typer.Option([], help="NAME=PATH of a peft adapter to serve (repeatable)."),
    device: Device = "auto",
    dtype: DtypeOption = Dtype.bfloat16,
    max_batch: int = typer.Option(DEFAULT_MAX_BATCH, min=1, max=256, help="Concurrent requests decoded together "
                                  "(continuous batching); 1: one at a time."),
) -> None:
    """A local OpenAI-compatible server (vLLM's surface) over the local model."""
    from agent_core.models.server import serve as run_server

    adapters = {}
    for item in adapter:
        name, sep, p = item.partition("=")
        if not sep or not name or not p:
            _fail(f"--adapter takes NAME=PATH, got {item!r}")
        adapters[name] = Path(p)
    try:
        from agent_core.models.devices import resolve_device

        resolve_device(device)
    except ValueError as exc:
        _fail(str(exc))
    run_server(host=host, port=port, adapters=adapters, dtype=dtype.value, device=device, max_batch=max_batch)


def _flow_params(params: type, run: RunOptions, **fields):
    """`params` (a flow's parameters) from `fields` and the options every flow shares; a bad
    value or an unreachable cluster fails here, before the flow starts."""
    try:
        return params(**fields, **run.flow_params())
    except (ValueError, RuntimeError, ConnectionError) as exc:
        _fail(str(exc))


@app.command("optimize-scaffold")
@with_groups
def optimize_scaffold(
    env: GameTask = "crafter",
    seeds: Seeds = "0-3",
    iterations: int = typer.Option(2, min=1, help="Review iterations (K)."),
    patience: int = typer.Option(2, min=1, help="Stop after this many iterations without promotion (M)."),
    steps: Steps = 10,
    run: RunOptions = RunOptions(),
) -> None:
    """Outer loop 1: review, revise and gate the memory scaffold on fixed evaluation seeds
    (meta-LLM from AUTOMEM_META_BASE_URL / AUTOMEM_META_MODEL, else the rule-based reviewer)."""
    from agent_core.workspace import configure_prefect_env

    configure_prefect_env(run.workspace)
    from flows.scaffold_loop import ScaffoldLoopParams, scaffold_loop

    params = _flow_params(ScaffoldLoopParams, run, game=env, seeds=parse_seeds(seeds), iterations=iterations,
                          patience=patience, max_steps=steps)
    result = scaffold_loop(params)
    for h in result["history"]:
        console.print(f"iteration {h['iteration']}: [bold]{h['verdict']}[/bold] - {h.get('reason', '')}")
    console.print(f"incumbent scaffold: {result['incumbent']}")


@app.command()
@with_groups
def rollout(
    games: GamesOptions = GamesOptions(seeds="0-1", steps=10),
    run: RunOptions = RunOptions(),
) -> None:
    """Run the rollout flow (episodes -> Parquet archive -> report)."""
    from agent_core.workspace import configure_prefect_env

    configure_prefect_env(run.workspace)
    from flows.rollout import RolloutParams, rollout as rollout_flow

    params = _flow_params(RolloutParams, run, **games.flow_params())
    result = rollout_flow(params)
    console.print(f"report: {result['report']}")


@app.command()
@with_groups
def evaluate(
    arm: list[str] = typer.Option(..., "--arm", help="An agent: baseline, v0, incumbent or a scaffold "
                                  "directory, optionally +ADAPTER (e.g. v0+automem-runs/adapters/mem-1); repeatable."),
    games: GamesOptions = GamesOptions(seeds="0-4", steps=20),
    run: RunOptions = RunOptions(),
) -> None:
    """Several agents on the same seeds and step budget: progression with 95% intervals (MiniHack
    tasks averaged per seed), paired tests, plots."""
    from agent_core.workspace import configure_prefect_env

    configure_prefect_env(run.workspace)
    from flows.evaluate import Arm, EvaluateParams, evaluate as evaluate_flow

    arms = [Arm(scaffold=a.split("+", 1)[0], adapter=a.split("+", 1)[1] if "+" in a else None) for a in arm]
    params = _flow_params(EvaluateParams, run, arms=arms, **games.flow_params())
    result = evaluate_flow(params)
    rows = [(r["arm"], r["game"], r["n"], f"{r['mean']:.3f}", f"{r['se']:.3f}",
             f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}]" if r["ci_low"] is not None else f"- ({r['ci_note']})")
            for r in result["table"]]
    print_rows(console, ("arm", "game", "seeds", "progression", "BALROG SE", "95% CI"), rows)
    for c in result["comparisons"]:  # two-sided, Holm over all pairs and games
        console.print(f"{c['game']}: {c['b']} - {c['a']} {c['delta']:+.3f}, p {c['p']:.3f}, Holm p {c['p_holm']:.3f}: "
                      f"{c['direction']}")
    console.print(f"report: {result['report']}")


@app.command()
def report(
    workspace: Workspace = None,
    archive: Archive = None,
    out: Optional[Path] = typer.Option(None, help="Report file (default: <workspace>/reports/archive-report.md)."),
) -> None:
    """Rebuild a report (progression with intervals, memory plots) from the Parquet archive alone."""
    from agent_core.report import archive_report
    from agent_core.workspace import workspace_root

    root = workspace_root(workspace)
    source = archive or root / "archive"
    if not (source / "episodes").is_dir():
        _fail(f"no trace archive at {source} (episodes/ is missing): run a rollout or a loop first")
    path = archive_report(source, out or root / "reports" / "archive-report.md")
    console.print(f"report: {path}")


PRESETS = Path(__file__).resolve().parents[1] / "deployments" / "presets"


@app.command()
def iterate(
    preset: Path = typer.Option(PRESETS / "nightly-local.yaml", help="YAML file with the flow's `params`."),
    workspace: Workspace = None,
) -> None:
    """The nightly iteration (scaffold loop, then training loop) with a preset's parameters."""
    import yaml

    from agent_core.workspace import configure_prefect_env

    configure_prefect_env(workspace)
    from flows.iteration import IterationParams, iteration

    try:
        raw = yaml.safe_load(preset.read_text())["params"]
        params = IterationParams(**{**raw, **({"workspace": str(workspace)} if workspace else {})})
    except (OSError, KeyError, TypeError, yaml.YAMLError) as exc:
        _fail(f"cannot read preset {preset}: {exc}")
    except ValueError as exc:
        _fail(str(exc))
    result = iteration(params)
    curve = report_section(Path(result["report"]).read_text(), "## Learning curve")
    if curve:  # loop 2's rounds, what a night's learning came to
        console.print(curve, markup=False, highlight=False, soft_wrap=True)
    console.print(f"[bold]report:[/bold] {Path(result['report']).resolve()}")


def report_section(markdown: str, heading: str) -> str:
    """The section of a markdown report that starts with a line beginning `heading`, up to the
    next heading of the same level ("" when there is none)."""
    lines = markdown.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith(heading)), None)
    if start is None:
        return ""
    level = heading.split(" ", 1)[0] + " "
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith(level)), len(lines))
    return "\n".join(lines[start:end]).strip()


@app.command()
def run() -> None:
    """The main job on the embedded defaults (what `make run` does): the nightly iteration on
    Crafter with the local model and a small budget, on Prefect's local API, into ./automem-runs."""
    iterate(preset=PRESETS / "nightly-local.yaml", workspace=None)


if __name__ == "__main__":
    app()
