"""A report rebuilt from the Parquet archive alone (through DuckDB): every agent the archive
holds — a scaffold and its models — per game, with the evaluation statistics and plots.
`automem report` runs it; no trace files or Prefect are needed."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from agent_core.archive import connect
from agent_core.diagnostics import GroupDiagnostics, group_from_row, sql_aggregate
from agent_core.evaluation import estimate
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
        diagnostics = agent_diagnostics(con)
        meta = con.execute(
            "SELECT role, run_id, any_value(trial), any_value(candidate), count(*), sum(prompt_tokens), "
            "sum(completion_tokens), sum(cost_usd), any_value(stop_reason) FROM meta_calls "
            "GROUP BY role, run_id ORDER BY role, run_id").fetchall()
    finally:
        con.close()
    by_agent: dict[tuple[str, str, str], list[tuple[str, int, float]]] = defaultdict(list)
    for game, task, scaffold, model, seed, progression, _steps, _chars in episodes:
        by_agent[(game, scaffold, model)].append((task, seed, progression))
    lines_md = ["# Report from the trace archive", "",
                f"{len(episodes)} finished episodes in `{Path(archive_root).name}`; progression per agent "
                "(scaffold and memory model) with BALROG's standard error (population SD over all episodes, "
                "tasks pooled, / sqrt(episodes)) and a 95% bootstrap interval over seeds (from 3 seeds on). "
                "Memory diagnostics pooled over the agent's episodes: growth = (final - seeded characters) / "
                "steps; write/search = successful writes / successful SEARCH/READ/TAIL; look-ups used = "
                "successful look-ups whose result a later call of the same step saw before writing or acting.",
                ""]
    figures = []
    for game in sorted({g for g, _, _ in by_agent}):
        agents = sorted(k for k in by_agent if k[0] == game)
        lines_md += [f"## {game}", "", "| scaffold | memory model | seeds | episodes | progression | BALROG SE | 95% CI | "
                     "growth chars/step | write/search | look-ups used | writes after look-up |",
                     "|---|---|---|---|---|---|---|---|---|---|---|"]
        rows = []
        for key in agents:
            e = estimate(by_agent[key])
            d = diagnostics.get(key)
            ci = f"[{e.ci_low:.3f}, {e.ci_high:.3f}]" if e.ci_low is not None else f"- ({e.ci_note})"
            lines_md.append(f"| {key[1]} | {key[2]} | {e.n} | {e.episodes} | {e.mean:.3f} | {e.se:.3f} | {ci} | "
                            f"{_num(d and d.growth_chars_per_step, 1)} | {_num(d and d.write_search_ratio, 2)} | "
                            f"{f'{d.lookups_used}/{d.lookups}' if d else '-'} | {d.writes_after_lookup if d else '-'} |")
            rows.append((f"{key[1][:8]} {key[2][:16]}", e.mean,
                         e.mean if e.ci_low is None else e.ci_low, e.mean if e.ci_high is None else e.ci_high))
        figures.append(bars_with_intervals(f"progression-{game}.png",
                                           f"{game}: progression (95% CI over seeds, where 3+)", rows))
        series = {f"{h[:8]} {m[:16]}": [(s, c) for g2, h2, m2, s, c in memory if (g2, h2, m2) == (game, h, m)]
                  for _, h, m in agents}
        figures.append(lines(f"memory-{game}.png", f"{game}: memory size over the episode", series, "step",
                             "memory characters"))
        lines_md += ["", "{{figure:progression-" + game + ".png}}", "", "{{figure:memory-" + game + ".png}}", ""]
    if meta:
        lines_md += ["## Meta-LLM ledger", "", "The agentic reviewer's and curator's calls (`meta_calls`), per run.",
                     "", "| role | run | trial | candidate | calls | prompt tokens | completion tokens | dollars | "
                     "stopped by |", "|---|---|---|---|---|---|---|---|---|"]
        lines_md += [f"| {role} | {run} | {'-' if trial is None else trial} | {candidate or '-'} | {n} | {p:,} | "
                     f"{c:,} | {usd:.4f} | {stop} |" for role, run, trial, candidate, n, p, c, usd, stop in meta]
        lines_md.append("")
    out = Path(out)
    write_report(out, "\n".join(lines_md), figures)
    return out


def ledger_totals(ledgers: list[tuple[str, Any]]) -> dict[str, Any]:
    """The sums of meta-LLM runs' ledgers (`review.agentic.read_ledgers`): calls, tokens in
    and out, dollars, and what stopped each run."""
    calls = [c for _, r in ledgers for c in r.calls]
    return {"calls": len(calls), "prompt_tokens": sum(c.prompt_tokens for c in calls),
            "completion_tokens": sum(c.completion_tokens for c in calls),
            "cost_usd": round(sum(c.cost_usd for c in calls), 6),
            "stop_reason": ", ".join(r.stop_reason for _, r in ledgers) or None}


def ledger_line(ledgers: list[tuple[str, Any]], who: str = "Curator") -> str:
    """One line for a report: `ledger_totals`, and each run's stop reason and verdict."""
    if not ledgers:
        return f"{who} ledger: no meta-LLM calls recorded"
    t = ledger_totals(ledgers)
    stops = ", ".join(f"{stem} stopped by {r.stop_reason} ({r.verdict})" for stem, r in ledgers)
    return (f"{who} ledger: {t['calls']} calls, {t['prompt_tokens']:,} prompt + {t['completion_tokens']:,} "
            f"completion tokens, ${t['cost_usd']:.4f}; {stops}")


def agent_diagnostics(con) -> dict[tuple[str, str, str], GroupDiagnostics]:
    """(game, scaffold hash, memory model) -> the memory diagnostics of its finished episodes,
    pooled as `diagnostics.aggregate` pools them."""
    return {(g, h, m): group_from_row(rest) for g, h, m, *rest in con.execute(
        f"SELECT e.game, e.scaffold_hash, e.memory_model, {sql_aggregate('e')} FROM episodes e "
        "WHERE e.complete GROUP BY ALL").fetchall()}


def _num(x: float | None, digits: int) -> str:
    return "-" if x is None else f"{x:.{digits}f}"
