"""The `automem` command line: bad input gets a clear message, good input the real output."""

import pytest
import typer
from typer.testing import CliRunner

from agent_core.models.base import Roles
from agent_core.archive import archive_trace
from automem_cli.main import app, parse_seeds
from agent_core.episode import run_episode
from agent_core.models.config import RoutineScript
from agent_core.models.scripted import ScriptedModel
from agent_core.scaffold import Scaffold
from environments import make_env

runner = CliRunner()


def test_env_show_and_errors():
    out = runner.invoke(app, ["env", "show", "tiny", "--seed", "1"])
    assert out.exit_code == 0 and "You are in the" in out.output and "take key" in out.output
    bad = runner.invoke(app, ["env", "show", "chess"])
    assert bad.exit_code == 2 and "valid games" in bad.output
    neg = runner.invoke(app, ["env", "show", "tiny", "--seed", "-1"])
    assert neg.exit_code != 0


def test_env_play_reads_actions():
    out = runner.invoke(app, ["env", "play", "tiny", "--seed", "0"], input="look\nfly\n\n")
    assert out.exit_code == 0 and "unknown action 'fly'" in out.output


def test_trace_show_and_query(tmp_path):
    summary = run_episode(make_env("tiny"), Scaffold.builtin("tiny"), Roles(memory=ScriptedModel(RoutineScript().reply)),
                          0, 3, tmp_path / "episodes" / "tiny" / "e")
    out = runner.invoke(app, ["trace", "show", summary.trace_path])
    assert out.exit_code == 0 and "step 2" in out.output and "write_search_ratio" in out.output
    # what memory did, as `automem play` prints it too (the same diagnostics table)
    for name in ("lookups_used", "writes_after_lookup", "distinct_actions", "distinct_written_texts"):
        assert name in out.output
    archive_trace(summary.trace_path, tmp_path / "archive")
    q = runner.invoke(app, ["traces", "query", "select count(*) as n from steps", "--workspace", str(tmp_path)])
    assert q.exit_code == 0 and "3" in q.output
    refused = runner.invoke(app, ["traces", "query", "select * from read_csv('/etc/passwd')",
                                  "--workspace", str(tmp_path)])
    assert refused.exit_code == 2 and "error" in refused.output


def test_parse_seeds():
    assert parse_seeds("0-3") == [0, 1, 2, 3] and parse_seeds("0,2,5") == [0, 2, 5]
    for bad in ("x", "-1", ""):
        with pytest.raises(typer.BadParameter):
            parse_seeds(bad)


def test_agent_core_imports_neither_prefect_nor_the_flows():
    import subprocess
    import sys

    code = ("import pkgutil, importlib, sys, agent_core, environments\n"
            "for pkg in (agent_core, environments):\n"
            "    for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):\n"
            "        importlib.import_module(m.name)\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('prefect', 'flows', 'tasks', 'automem_cli'))\n"
            "assert not bad, bad\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_evaluate_refuses_bad_arms_before_playing(tmp_path):
    out = runner.invoke(app, ["evaluate", "--arm", "no/such/scaffold", "--env", "tiny", "--workspace", str(tmp_path)])
    assert out.exit_code == 2 and "baseline, v0, incumbent or a scaffold" in out.output
    out = runner.invoke(app, ["evaluate", "--arm", "baseline+adapters/x", "--env", "tiny", "--workspace", str(tmp_path)])
    assert out.exit_code == 2 and "no memory role" in out.output
    assert not (tmp_path / "episodes").exists()


def test_report_rebuilds_from_the_archive_alone(tmp_path):
    from agent_core.models.scripted import ScriptedModel

    for seed in (0, 1, 2):
        s = run_episode(make_env("tiny"), Scaffold.builtin("tiny"), Roles(memory=ScriptedModel(RoutineScript().reply)),
                        seed, 3, tmp_path / "episodes" / "tiny" / f"e{seed}")
        archive_trace(s.trace_path, tmp_path / "archive")
    import shutil

    shutil.rmtree(tmp_path / "episodes")  # the archive alone
    out = runner.invoke(app, ["report", "--workspace", str(tmp_path)])
    assert out.exit_code == 0, out.output
    text = (tmp_path / "reports" / "archive-report.md").read_text()
    assert "## tiny" in text and "| 3 |" in text and "archive-report-progression-tiny.png" in text
    assert (tmp_path / "reports" / "archive-report-memory-tiny.png").read_bytes()[:4] == b"\x89PNG"
    missing = runner.invoke(app, ["report", "--workspace", str(tmp_path / "empty")])
    assert missing.exit_code == 2 and "no trace archive" in missing.output


def test_every_preset_is_a_valid_nightly_configuration():
    from pathlib import Path

    import yaml

    from flows.iteration import IterationParams

    presets = sorted((Path(__file__).parents[1] / "deployments" / "presets").glob("*.yaml"))
    assert len(presets) >= 2
    for preset in presets:
        IterationParams(**yaml.safe_load(preset.read_text())["params"])


def test_sampling_options_out_of_range_fail_before_any_episode(tmp_path):
    for command in (["play", "--env", "tiny"], ["rollout", "--env", "tiny"]):
        out = runner.invoke(app, [*command, "--temperature", "3", "--workspace", str(tmp_path)])
        assert out.exit_code != 0 and "temperature must be between 0 and 2" in out.output, out.output
    assert not (tmp_path / "episodes").exists()


def test_play_names_the_folder_by_the_episode_key_with_every_override_and_reuses_a_finished_one(
        tmp_path, local_model):
    import json
    from pathlib import Path

    play = ["play", "--env", "tiny", "--seed", "0", "--steps", "2", "--device", "cpu", "--max-tokens", "24",
            "--workspace", str(tmp_path)]  # the local model (`local_model` prepares it)

    def episodes() -> dict[str, dict]:
        """Every episode folder, with its header; none holds a set-aside attempt."""
        assert not list(tmp_path.glob("episodes/*/*/attempts")), "an episode was set aside"
        return {t.parent.name: json.loads(t.read_text().split("\n")[0])
                for t in tmp_path.glob("episodes/tiny/*/trace.jsonl")}

    greedy = runner.invoke(app, play)
    assert greedy.exit_code == 0, greedy.output
    [(greedy_id, header)] = episodes().items()
    assert header["episode_id"] == greedy_id and header["sampling"]["temperature"] == 0.0
    # the header says how the model ran, whether a replay is exact included
    assert header["models"]["device"] == "cpu" and header["models"]["batch_invariant"] == "on"
    trace = Path(tmp_path, "episodes", "tiny", greedy_id, "trace.jsonl")
    before = (trace.read_bytes(), trace.stat().st_mtime_ns)

    sampled = runner.invoke(app, [*play, "--temperature", "1.0"])
    assert sampled.exit_code == 0, sampled.output
    both = episodes()
    assert len(both) == 2 and all(h["episode_id"] == folder for folder, h in both.items())
    [sampled_id] = set(both) - {greedy_id}
    assert both[sampled_id]["sampling"]["temperature"] == 1.0
    assert (trace.read_bytes(), trace.stat().st_mtime_ns) == before  # the greedy episode is intact

    again = runner.invoke(app, play)
    assert again.exit_code == 0, again.output
    assert f"episode {greedy_id} already played: reusing it" in again.output
    assert (trace.read_bytes(), trace.stat().st_mtime_ns) == before and episodes().keys() == both.keys()


def test_iterate_prints_the_learning_curve_section_of_the_report():
    from automem_cli.main import report_section

    report = "# Night\n\n## Learning curve (expert iteration)\n\n| round |\n|---|\n| 0 |\n\n## Trial 0\nrest"
    assert report_section(report, "## Learning curve") == "## Learning curve (expert iteration)\n\n| round |\n|---|\n| 0 |"
    assert report_section("# Night\n\n## Trial 0\n", "## Learning curve") == ""
