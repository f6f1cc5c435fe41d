"""What the `automem` command line prints: wide results stay readable at 80 columns (one record
per block), `traces query --format csv|json` parses back to the rows, and the sampling and
dtype options are offered and checked before anything runs."""

import csv
import io
import json

import pytest
from rich.console import Console
from typer.testing import CliRunner

from agent_core.archive import archive_trace, run_query
from agent_core.episode import run_episode
from agent_core.models.base import Roles
from agent_core.models.config import RoutineScript
from agent_core.models.scripted import ScriptedModel
from agent_core.scaffold import Scaffold
from automem_cli.main import app
from automem_cli.output import print_rows
from environments import make_env

runner = CliRunner()
EPISODES = "select * from episodes order by seed"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A workspace whose archive holds two short tiny episodes (seeds 0 and 1)."""
    root = tmp_path_factory.mktemp("ws")
    for seed in (0, 1):
        s = run_episode(make_env("tiny"), Scaffold.builtin("tiny"), Roles(memory=ScriptedModel(RoutineScript().reply)),
                        seed, 3, root / "episodes" / "tiny" / f"e{seed}")
        archive_trace(s.trace_path, root / "archive")
    return root


def query(workspace, sql, *options, columns="80"):
    return runner.invoke(app, ["traces", "query", sql, "--workspace", str(workspace), *options],
                         env={"COLUMNS": columns})


def flat(text: str) -> str:
    """Output with rich's boxes and line wrapping taken out."""
    return " ".join(text.replace("│", " ").split())


def test_a_wide_result_prints_one_record_per_block_at_80_columns(workspace):
    columns = run_query(workspace / "archive", EPISODES).column_names
    assert len(columns) > 20  # far more than 80 columns hold as a table
    out = query(workspace, EPISODES)
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert all(len(line) <= 80 for line in lines)
    assert "record 1 of 2" in out.output and "record 2 of 2" in out.output and "┃" not in out.output
    for name in columns:  # every column, by name, beside its value
        assert any(line.startswith(name + " ") for line in lines), name
    assert sum(line.split()[:2] == ["seed", "0"] for line in lines) == 1
    assert sum(line.split()[:2] == ["seed", "1"] for line in lines) == 1


def test_a_result_that_fits_stays_a_table(workspace):
    out = query(workspace, "select seed, steps from episodes order by seed")
    assert out.exit_code == 0, out.output
    assert "┃ seed ┃ steps ┃" in out.output and "record" not in out.output
    # the wide result too, on a terminal wide enough for it
    wide = query(workspace, EPISODES, columns="2000")
    assert wide.exit_code == 0 and "record 1" not in wide.output and "scaffold_hash" in wide.output


def test_every_table_falls_back_the_same_way():
    def shown(width: int, columns, rows) -> str:
        console = Console(file=io.StringIO(), width=width)
        print_rows(console, columns, rows, title="t")
        return console.file.getvalue()

    columns = [f"column_{i}" for i in range(12)]
    narrow = shown(80, columns, [[f"value {i}" for i in range(12)]])
    assert "record 1 of 1" in narrow and "column_11  value 11" in narrow
    assert all(len(line) <= 80 for line in narrow.splitlines())
    assert "┃ column_0 ┃" in shown(400, columns, [[f"value {i}" for i in range(12)]])
    assert "no rows (columns: column_0, column_1" in shown(80, columns, [])
    # a value that is markup-like is shown as it is
    assert "[bold]x[/bold]" in shown(80, ["metric", "value"], [["a", "[bold]x[/bold]"]])


def test_csv_and_json_parse_back_to_the_rows(workspace):
    rows = run_query(workspace / "archive", EPISODES).to_pylist()
    as_csv = query(workspace, EPISODES, "--format", "csv")
    assert as_csv.exit_code == 0, as_csv.output
    parsed = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert parsed == [{k: "" if v is None else str(v) for k, v in row.items()} for row in rows]
    as_json = query(workspace, EPISODES, "--format", "json")
    assert as_json.exit_code == 0, as_json.output
    assert json.loads(as_json.stdout) == rows
    # rows past --limit are counted on stderr, so stdout still parses
    first = query(workspace, EPISODES, "--format", "json", "--limit", "1")
    assert json.loads(first.stdout) == rows[:1] and "1 more rows" in first.stderr


def test_an_unknown_format_is_refused_with_the_choices(workspace):
    out = query(workspace, EPISODES, "--format", "xml")
    assert out.exit_code == 2
    said = flat(out.output)
    assert "Invalid value for '--format'" in said and "'table', 'csv', 'json'" in said


def test_play_and_serve_offer_the_sampling_and_dtype_options():
    play = runner.invoke(app, ["play", "--help"], env={"COLUMNS": "120"})
    assert play.exit_code == 0 and "--top-p" in play.output and "--sampling-seed" in play.output
    assert "--temperature" in play.output
    serve = runner.invoke(app, ["serve", "--help"], env={"COLUMNS": "120"})
    assert serve.exit_code == 0 and "--dtype" in serve.output and "bfloat16|float32" in serve.output
    bad = runner.invoke(app, ["serve", "--dtype", "int8"])
    assert bad.exit_code == 2 and "Invalid value for '--dtype'" in flat(bad.output)


@pytest.mark.parametrize("command", [["play", "--env", "tiny"], ["rollout", "--env", "tiny"]])
def test_a_top_p_out_of_range_is_refused_before_anything_runs(tmp_path, command):
    for value in ("1.5", "0"):
        out = runner.invoke(app, [*command, "--top-p", value, "--workspace", str(tmp_path)])
        assert out.exit_code == 2
        assert f"top_p must be greater than 0 and at most 1, got {float(value)}" in flat(out.output), out.output
    neg = runner.invoke(app, [*command, "--sampling-seed", "-1", "--workspace", str(tmp_path)])
    assert neg.exit_code == 2 and "--sampling-seed" in neg.output
    assert not (tmp_path / "episodes").exists()


def test_the_sampling_options_reach_the_flow(tmp_path, monkeypatch):
    import flows.evaluate
    import flows.rollout

    seen = {}

    def capture(params):
        seen["params"] = params
        return {"report": "r", "table": [], "comparisons": []}

    monkeypatch.setattr(flows.rollout, "rollout", capture)
    monkeypatch.setattr(flows.evaluate, "evaluate", capture)
    out = runner.invoke(app, ["rollout", "--env", "tiny", "--top-p", "0.9", "--sampling-seed", "7",
                              "--temperature", "0.5", "--workspace", str(tmp_path)])
    assert out.exit_code == 0, out.output
    p = seen["params"]
    assert (p.models.top_p, p.models.seed, p.models.temperature) == (0.9, 7, 0.5)
    assert (p.games, p.seeds, p.max_steps, p.concurrency) == (["tiny/key-door"], [0, 1], 10, 4)  # rollout's defaults
    out = runner.invoke(app, ["evaluate", "--arm", "v0", "--env", "tiny", "--workspace", str(tmp_path)])
    assert out.exit_code == 0, out.output
    p = seen["params"]
    assert (p.seeds, p.max_steps, p.models.top_p, p.models.seed) == ([0, 1, 2, 3, 4], 20, None, None)
