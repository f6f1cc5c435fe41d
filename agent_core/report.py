"""A report rebuilt from the Parquet archive alone (through DuckDB): every agent the archive
holds — a scaffold and its models — per game, with the evaluation statistics and plots.
`automem report` runs it; no trace files or Prefect are needed."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from agent_core.archive import connect
from agent_core.diagnostics import CONSULTS, WRITES, sql_list
from agent_core.evaluation import estimate, per_seed
from agent_core.plots import bars_with_intervals, lines, write_report


def archive_report(archive_root: Path | str, out: Path | str) -> Path:
    """Write `out` (markdown, PNGs beside it) from the archive at `archive_root`."""
    con = connect(archive_root)
    try:
        episodes = con.execute(
            "SELECT game, task, scaffold_hash, memory_model, seed, progression, steps, memory_chars "
            "FROM episodes WHERE complete ORDER BY ALL").fetchall()
        memory = con.execute(
            "SELECT e.game, e.scaffold_hash, e.memory_model, s.step, avg(s.memory_chars) FROM steps s "
            "JOIN episodes e ON e.episode_id = s.episode_id WHERE e.complete GROUP BY ALL ORDER BY ALL").fetchall()
        ops = dict(((g, h, m), (w, c)) for g, h, m, w, c in con.execute(
            "SELECT e.game, e.scaffold_hash, e.memory_model, "
            f"count(*) FILTER (WHERE o.op IN ({sql_list(WRITES)})), "
            f"count(*) FILTER (WHERE o.op IN ({sql_list(CONSULTS)})) "
            "FROM memory_ops o JOIN episodes e ON e.episode_id = o.episode_id GROUP BY ALL").fetchall())
    finally:
        con.close()
    by_agent: dict[tuple[str, str, str], list[tuple[str, int, float]]] = defaultdict(list)
    for game, task, scaffold, model, seed, progression, _steps, _chars in episodes:
        by_agent[(game, scaffold, model)].append((task, seed, progression))
    lines_md = ["# Report from the trace archive", "",
                f"{len(episodes)} finished episodes in `{Path(archive_root).name}`; progression per agent "
                "(scaffold and memory model) with BALROG's standard error and a 95% bootstrap interval over seeds.", ""]
    figures = []
    for game in sorted({g for g, _, _ in by_agent}):
        agents = sorted(k for k in by_agent if k[0] == game)
        lines_md += [f"## {game}", "", "| scaffold | memory model | seeds | progression | SE | 95% CI | writes/search |",
                     "|---|---|---|---|---|---|---|"]
        rows = []
        for key in agents:
            e = estimate(list(per_seed(by_agent[key]).values()))
            writes, consults = ops.get(key, (0, 0))
            ratio = f"{writes / consults:.2f}" if consults else "-"
            lines_md.append(f"| {key[1]} | {key[2]} | {e.n} | {e.mean:.3f} | {e.se:.3f} | "
                            f"[{e.ci_low:.3f}, {e.ci_high:.3f}] | {ratio} |")
            rows.append((f"{key[1][:8]} {key[2][:16]}", e.mean, e.ci_low, e.ci_high))
        figures.append(bars_with_intervals(f"progression-{game}.png", f"{game}: progression (95% CI)", rows))
        series = {f"{h[:8]} {m[:16]}": [(s, c) for g2, h2, m2, s, c in memory if (g2, h2, m2) == (game, h, m)]
                  for _, h, m in agents}
        figures.append(lines(f"memory-{game}.png", f"{game}: memory size over the episode", series, "step",
                             "memory characters"))
        lines_md += ["", "{{figure:progression-" + game + ".png}}", "", "{{figure:memory-" + game + ".png}}", ""]
    out = Path(out)
    write_report(out, "\n".join(lines_md), figures)
    return out
