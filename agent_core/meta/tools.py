"""Tools over the trace store for the meta-LLM (scaffold reviewer and training curator), in
OpenAI function-calling form: each tool is a JSON-schema'd function whose arguments are a
pydantic model (one definition: the schema the model sees and the check its call gets).

- `sql(query)`: one read-only SELECT over the archive's tables (episodes, steps, calls,
  memory_ops, chains, and meta_calls: the meta-LLM's ledger) (`archive.run_query`: DuckDB
  with external access off, files limited to the archive, memory, threads and time limited,
  no temp directory, configuration locked), rows capped on DuckDB's relation (a comment in
  the query cannot lift the cap) and characters capped.
- `trace(episode, from_step, to_step, offset)`: one episode's steps in full (observation,
  every model call's new messages and reply, op results), paged under a character cap.
- `grep(pattern, fields, episode, max_hits)`: a regular expression over traces, hits with
  episode and step.
- `memory_at(episode, step, file)`, `memory_diff(episode, step_a, step_b)`: the memory
  directory after a step, rebuilt by replaying the recorded successful writes on the
  scaffold's initial files (and checked against the recorded size).
- `read_file(path)`: the incumbent scaffold's files and the agent's code (`agent_core/`), not the
  games' code (their generators and solutions), nothing else.

Each loop adds its submission tool on a subclass: `submit_revision` (the reviewer,
`review/agentic.py`) and `submit_program` (the curator, `training/agentic.py`), each checked
by that loop's own validation; a rejection is the tool's result, so the agent can fix it.

`Toolbox.call(name, arguments)` never raises: an unknown tool, malformed JSON or bad
arguments come back as an error result that says what is valid.
"""

from __future__ import annotations

import difflib
import json
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from agent_core.archive import QueryError, connect, run_query
from agent_core.memory import MemoryDir
from agent_core.meta.tool_specs import (GrepArgs, MemoryAtArgs, MemoryDiffArgs, ReadFileArgs, SqlArgs, Tool, ToolCaps,
                                        ToolError, ToolResult, TraceArgs)
from agent_core.commands import WRITE_OPS
from agent_core.scaffold import Scaffold

#: the project's root: the folder holding the `agent_core` package
PROJECT_ROOT = Path(__file__).resolve().parents[2]
#: folders of the agent's code `read_file` may show, and the kinds of file it shows there
CODE_DIRS = ("agent_core",)
CODE_SUFFIXES = frozenset({".py", ".jinja", ".yaml", ".md", ".txt"})


class Toolbox:
    """The trace-store tools over one archive, for one incumbent scaffold.

    Args:
        archive_root: the Parquet archive (`agent_core.archive`).
        incumbent: the scaffold under review (read_file shows its files; replay seeds from it).
        scaffolds_root: the content-addressed scaffold store, for replaying other scaffolds'
            episodes (their initial files); None: only the incumbent's episodes replay.
        caps: result sizes.
    """

    def __init__(self, archive_root: Path | str, incumbent: Scaffold, scaffolds_root: Path | str | None = None,
                 caps: ToolCaps | None = None) -> None:
        self.archive_root = Path(archive_root)
        self.incumbent = incumbent
        self.scaffolds_root = Path(scaffolds_root) if scaffolds_root else None
        self.caps = caps or ToolCaps()
        self._con = None
        self._replay: dict[str, tuple[int, MemoryDir, Path]] = {}
        self.tools: dict[str, Tool] = {t.name: t for t in self._tools()}

    #: a loop's submission tool, on its subclass: (name, argument model, what it submits); the
    #: subclass's method of that name checks the submission
    SUBMISSION: tuple[str, type, str] | None = None

    def _tools(self) -> list[Tool]:
        tools = self._trace_tools()
        if self.SUBMISSION:
            name, args, what = self.SUBMISSION
            tools.append(Tool(name=name, args=args, run=getattr(self, name), description=f"{what} It is "
                              "validated at once; a rejection says why, and you may fix it and submit again."))
        return tools

    def _trace_tools(self) -> list[Tool]:
        return [
            Tool(name="sql", args=SqlArgs, run=self.sql,
                 description="Run one read-only SQL SELECT (DuckDB) over the trace archive; rows and "
                 f"characters are capped ({self.caps.max_rows} rows)."),
            Tool(name="trace", args=TraceArgs, run=self.trace,
                 description="Show an episode's steps in full: observation, every model call's new messages "
                 "and reply, memory operations and their results. Paged: long windows continue at `offset`."),
            Tool(name="grep", args=GrepArgs, run=self.grep,
                 description="Find a regular expression in the traces; each hit gives episode, step and field."),
            Tool(name="memory_at", args=MemoryAtArgs, run=self.memory_at,
                 description="The agent's memory files as they stood after a step (rebuilt from the "
                 "recorded operations)."),
            Tool(name="memory_diff", args=MemoryDiffArgs, run=self.memory_diff,
                 description="What changed in the memory files between two steps (unified diff)."),
            Tool(name="read_file", args=ReadFileArgs, run=self.read_file,
                 description="Read a file of the incumbent scaffold or of the agent's code (read-only)."),
        ]

    # -- the protocol ----------------------------------------------------------------------

    def specs(self, names: list[str] | None = None) -> list[dict[str, Any]]:
        """The OpenAI `tools` list (all tools, or those named)."""
        return [t.spec() for n, t in self.tools.items() if names is None or n in names]

    def call(self, name: str, arguments: str | dict[str, Any] | None) -> ToolResult:
        """Run one tool call; every failure is an error result, never an exception."""
        tool = self.tools.get(name)
        if tool is None:
            return ToolResult(name=str(name), ok=False,
                              content=f"error: unknown tool {name!r}; tools: {', '.join(self.tools)}")
        try:
            data = json.loads(arguments) if isinstance(arguments, str) else (arguments or {})
        except json.JSONDecodeError as exc:
            return ToolResult(name=name, ok=False, content=f"error: arguments are not valid JSON ({exc.msg} at "
                              f"column {exc.colno}); send a JSON object matching the tool's schema")
        if not isinstance(data, dict):
            return ToolResult(name=name, ok=False, content=f"error: arguments must be a JSON object, "
                              f"got {type(data).__name__}")
        try:
            args = tool.args.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'arguments'}: {e['msg']}" for e in exc.errors())
            fields = ", ".join(tool.args.model_fields)
            return ToolResult(name=name, ok=False, content=f"error: bad arguments for {name}: {problems} "
                              f"(arguments: {fields})")
        try:
            out = tool.run(args)
        except (ToolError, QueryError) as exc:
            return ToolResult(name=name, ok=False, content=f"error: {exc}")
        except Exception as exc:  # a tool bug must not end a review: the model sees it, the trace keeps it
            return ToolResult(name=name, ok=False, content=f"error: {name} failed: {type(exc).__name__}: {exc}")
        return out if isinstance(out, ToolResult) else ToolResult(name=name, ok=True, content=out)

    def close(self) -> None:
        for _, memory, tmp in self._replay.values():
            shutil.rmtree(tmp, ignore_errors=True)
        self._replay.clear()
        if self._con is not None:
            self._con.close()
            self._con = None

    # -- helpers ---------------------------------------------------------------------------

    @property
    def con(self):
        """The sandboxed connection for the tools' own (parameterised) queries."""
        if self._con is None:
            self._con = connect(self.archive_root)
        return self._con

    def _rows(self, sql: str, params: list[Any]) -> list[dict[str, Any]]:
        cur = self.con.execute(sql, params)
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r)) for r in cur.fetchall()]

    def episode_id(self, given: str) -> str:
        """The full id of the episode `given` names (an id or a unique prefix)."""
        ids = [r["episode_id"] for r in self._rows(
            "SELECT DISTINCT episode_id FROM episodes WHERE starts_with(episode_id, ?) ORDER BY 1 LIMIT 6", [given])]
        if len(ids) == 1:
            return ids[0]
        if given in ids:
            return given
        if not ids:
            known = [r["episode_id"] for r in self._rows("SELECT episode_id FROM episodes ORDER BY 1 LIMIT 10", [])]
            raise ToolError(f"no episode {given!r} in the archive; episodes: {', '.join(known) or 'none'}")
        raise ToolError(f"episode prefix {given!r} is ambiguous: {', '.join(ids[:5])}, ...")

    def _page(self, text: str, offset: int, what: str) -> str:
        cap = self.caps.max_chars
        if offset >= len(text) and text:
            raise ToolError(f"offset {offset} is past the end of {what} ({len(text)} characters)")
        page = text[offset:offset + cap]
        end = offset + len(page)
        if offset or end < len(text):
            page += f"\n[{what}: characters {offset}-{end} of {len(text)}" + (
                f"; continue with offset={end}]" if end < len(text) else "]")
        return page

    # -- sql -------------------------------------------------------------------------------

    def sql(self, args: SqlArgs) -> str:
        # run_query refuses what is not one SELECT, and caps the rows on DuckDB's relation (one
        # more than can be shown, to tell that more exist) within the tool's memory limit
        table = run_query(self.archive_root, args.query, timeout_s=self.caps.sql_timeout_s,
                          max_rows=self.caps.max_rows + 1, memory_mb=self.caps.sql_memory_mb)
        names = table.column_names
        more = table.num_rows > self.caps.max_rows
        rows = table.slice(0, self.caps.max_rows).to_pylist()
        lines = ["\t".join(names)]
        used = len(lines[0])
        shown = 0
        for r in rows:
            line = "\t".join(_cell(r[n]) for n in names)
            if used + len(line) + 1 > self.caps.max_chars:
                break
            lines.append(line)
            used += len(line) + 1
            shown += 1
        complete = shown == len(rows) and not more
        note = f"\n[{shown} rows shown" + ("" if complete else ("; more rows exist" if more or shown == len(rows)
                                                                 else f" of the first {len(rows)}")
                                          + "; narrow the query (WHERE, LIMIT, aggregates) or select fewer columns") + "]"
        return "\n".join(lines) + note

    # -- trace -----------------------------------------------------------------------------

    def trace(self, args: TraceArgs) -> str:
        episode = self.episode_id(args.episode)
        last = args.to_step if args.to_step is not None else args.from_step + 4
        if last < args.from_step:
            raise ToolError(f"to_step ({last}) is before from_step ({args.from_step})")
        note = ""
        if last - args.from_step + 1 > self.caps.max_window:
            last = args.from_step + self.caps.max_window - 1
            note = f"[window cut to {self.caps.max_window} steps: {args.from_step}-{last}]\n"
        text = note + self.render_steps(episode, args.from_step, last)
        return self._page(text, args.offset, f"trace {episode[:12]} steps {args.from_step}-{last}")

    def render_steps(self, episode: str, first: int, last: int) -> str:
        """Steps `first`..`last` of an episode in full text."""
        steps = self._rows("SELECT step, observation, action_text, action_source, reward, progression, invalid_ops, "
                           "memory_chars FROM steps WHERE episode_id = ? AND step BETWEEN ? AND ? ORDER BY step",
                           [episode, first, last])
        if not steps:
            n = self._rows("SELECT count(*) AS n, min(step) AS a, max(step) AS b FROM steps WHERE episode_id = ?",
                           [episode])[0]
            raise ToolError(f"episode {episode[:12]} has no steps {first}-{last}; it has {n['n']} steps "
                            f"({n['a']}-{n['b']})")
        calls = self._rows("SELECT step, call_id, call_index, routine, role, new_messages, reply, finish_reason "
                           "FROM calls WHERE episode_id = ? AND step BETWEEN ? AND ? ORDER BY call_index",
                           [episode, first, last])
        ops = self._rows("SELECT step, call_id, op_index, op, args, ok, result, duplicate FROM memory_ops "
                         "WHERE episode_id = ? AND step BETWEEN ? AND ? ORDER BY step, op_index",
                         [episode, first, last])
        out = []
        for s in steps:
            out.append(f"=== step {s['step']}: action {s['action_text']!r} ({s['action_source']}) reward "
                       f"{s['reward']} progression {s['progression']:.3f} invalid_ops {s['invalid_ops']} "
                       f"memory_chars {s['memory_chars']}")
            out.append(f"--- observation\n{s['observation']}")
            for c in (c for c in calls if c["step"] == s["step"]):
                out.append(f"--- call {c['call_index']} [{c['routine']}/{c['role']}] finish={c['finish_reason']}")
                for m in c["new_messages"] or []:
                    out.append(f"<{m['role']}>\n{m['content']}\n</{m['role']}>")
                out.append(f"<reply>\n{c['reply']}\n</reply>")
                for o in (o for o in ops if o["call_id"] == c["call_id"] and o["step"] == s["step"]):
                    out.append(f"  op {o['op']} {_args_text(o['args'])} -> {'ok' if o['ok'] else 'FAILED'}"
                               f"{' (duplicate)' if o['duplicate'] else ''}: {o['result']}")
        return "\n".join(out)

    # -- grep ------------------------------------------------------------------------------

    _GREP_SOURCES = {
        "observation": ("steps", "observation"),
        "action": ("steps", "action_text"),
        "reply": ("calls", "reply"),
        "prompt": ("calls", "array_to_string(list_transform(new_messages, m -> m.role || ': ' || m.content), '\n')"),
        "op_result": ("memory_ops", "result"),
        "op_args": ("memory_ops", "op || ' ' || CAST(args AS VARCHAR)"),
    }

    def grep(self, args: GrepArgs) -> str:
        try:
            re.compile(args.pattern)
        except re.error as exc:
            raise ToolError(f"bad regular expression: {exc}") from None
        limit = min(args.max_hits, self.caps.max_hits)
        episode = self.episode_id(args.episode) if args.episode else None
        parts, params = [], []
        for f in dict.fromkeys(args.fields):
            table, expr = self._GREP_SOURCES[f]
            where = "regexp_matches(x, ?)" + (" AND episode_id = ?" if episode else "") + " AND step >= ?"
            parts.append(f"SELECT episode_id, step, '{f}' AS field, x FROM (SELECT episode_id, step, {expr} AS x "
                         f"FROM {table}) WHERE {where}")
            params += [args.pattern] + ([episode] if episode else []) + [args.from_step]
        sql = " UNION ALL ".join(parts)
        try:
            total = self._rows(f"SELECT count(*) AS n FROM ({sql})", params)[0]["n"]
            hits = self._rows(f"SELECT * FROM ({sql}) ORDER BY episode_id, step, field LIMIT {limit}", params)
        except Exception as exc:  # RE2 refuses some Python syntax (look-arounds, back-references)
            raise ToolError(f"grep failed: {exc}") from None
        rx = re.compile(args.pattern)
        lines = []
        for h in hits:
            m = rx.search(h["x"] or "")
            a, b = (m.start(), m.end()) if m else (0, 0)
            snippet = (h["x"] or "")[max(0, a - 60):b + 60].replace("\n", " / ")
            lines.append(f"{h['episode_id'][:12]} step {h['step']} {h['field']}: {snippet}")
        text = "\n".join(lines) or "no hits"
        text = text[: self.caps.max_chars]
        return text + f"\n[{len(hits)} of {total} hits shown]"

    # -- memory ----------------------------------------------------------------------------

    def _scaffold(self, scaffold_hash: str) -> Scaffold:
        if scaffold_hash == self.incumbent.hash:
            return self.incumbent
        if self.scaffolds_root and (self.scaffolds_root / scaffold_hash).is_dir():
            return Scaffold.load(self.scaffolds_root / scaffold_hash)
        raise ToolError(f"the scaffold {scaffold_hash} of this episode is not available to rebuild its memory")

    def memory_state(self, episode: str, step: int) -> dict[str, str]:
        """The memory files after `step` (-1: the initial files), by replaying the episode's
        successful writes on its scaffold's initial files."""
        head = self._rows("SELECT scaffold_hash, steps FROM episodes WHERE episode_id = ?", [episode])[0]
        if step >= head["steps"]:
            raise ToolError(f"episode {episode[:12]} has {head['steps']} steps (0-{head['steps'] - 1})")
        cached = self._replay.get(episode)
        if cached is None or cached[0] > step:
            if cached:
                shutil.rmtree(cached[2], ignore_errors=True)
            scaffold = self._scaffold(head["scaffold_hash"])
            tmp = Path(tempfile.mkdtemp(prefix="replay-"))
            memory = MemoryDir(tmp / "memory", scaffold.config.limits)
            memory.seed_files({f.name: f.initial for f in scaffold.config.memory_files})
            cached = (-1, memory, tmp)
        done, memory, tmp = cached
        ops = self._rows("SELECT op, args FROM memory_ops WHERE episode_id = ? AND ok AND step > ? AND step <= ? "
                         f"AND op IN ({', '.join(repr(o) for o in WRITE_OPS)}) ORDER BY step, op_index",
                         [episode, done, step])
        for o in ops:
            memory.apply(o["op"], _args_dict(o["args"]))
        self._replay[episode] = (step, memory, tmp)
        return memory.files()

    def _recorded_chars(self, episode: str, step: int) -> int | None:
        rows = self._rows("SELECT memory_chars FROM steps WHERE episode_id = ? AND step = ?", [episode, step])
        return rows[0]["memory_chars"] if rows else None

    def memory_at(self, args: MemoryAtArgs) -> str:
        episode = self.episode_id(args.episode)
        files = self.memory_state(episode, args.step)
        when = "initial files" if args.step < 0 else f"after step {args.step}"
        check = ""
        recorded = self._recorded_chars(episode, args.step) if args.step >= 0 else None
        if recorded is not None and recorded != sum(len(t) for t in files.values()):
            check = (f"\n[note: the replay holds {sum(len(t) for t in files.values())} characters, the trace "
                     f"recorded {recorded}: hooks or limits may have acted differently]")
        if args.file is not None:
            if args.file not in files:
                raise ToolError(f"no file {args.file!r} {when}; files: {', '.join(files) or 'none'}")
            return self._page(files[args.file], args.offset, f"{args.file} {when}") + check
        listing = [f"memory of {episode[:12]} {when}: {len(files)} files, "
                   f"{sum(len(t) for t in files.values())} characters"]
        budget = self.caps.max_chars - 200
        for name, text in files.items():
            body = text if len(text) <= max(budget, 0) else text[:max(budget, 0)] + \
                f"\n...[{len(text) - max(budget, 0)} more characters: memory_at with file={name!r}]"
            listing.append(f"<file name=\"{name}\" chars=\"{len(text)}\">\n{body}\n</file>")
            budget -= len(body)
        return "\n".join(listing)[: self.caps.max_chars] + check

    def memory_diff(self, args: MemoryDiffArgs) -> str:
        episode = self.episode_id(args.episode)
        if args.step_b < args.step_a:
            raise ToolError(f"step_b ({args.step_b}) is before step_a ({args.step_a})")
        a = self.memory_state(episode, args.step_a)
        b = dict(self.memory_state(episode, args.step_b))
        out = []
        for name in sorted(set(a) | set(b)):
            if a.get(name) != b.get(name):
                out += difflib.unified_diff((a.get(name) or "").splitlines(), (b.get(name) or "").splitlines(),
                                            f"{name}@{args.step_a}", f"{name}@{args.step_b}", lineterm="")
        text = "\n".join(out) or f"no change between step {args.step_a} and step {args.step_b}"
        return self._page(text, 0, f"diff {args.step_a}->{args.step_b}")

    # -- read_file -------------------------------------------------------------------------

    def read_file(self, args: ReadFileArgs) -> str:
        path = args.path.strip()
        path = path[2:] if path.startswith("./") else path
        if path in self.incumbent.files:
            return self._page(self.incumbent.files[path].decode(errors="replace"), args.offset, path)
        target = (PROJECT_ROOT / path).resolve()
        allowed = [(PROJECT_ROOT / d).resolve() for d in CODE_DIRS]
        if not any(target == r or target.is_relative_to(r) for r in allowed):
            raise ToolError(f"{args.path!r} is outside what you may read: the scaffold's files "
                            f"({', '.join(sorted(self.incumbent.files))}) and the agent's code under "
                            f"{' and '.join(d + '/' for d in CODE_DIRS)}")
        if target.is_dir():
            names = sorted(str(p.relative_to(PROJECT_ROOT)) for p in target.rglob("*")
                           if p.is_file() and p.suffix in CODE_SUFFIXES and "__pycache__" not in p.parts)
            return self._page("\n".join(names), args.offset, f"listing of {path}")
        if not target.is_file() or target.suffix not in CODE_SUFFIXES:
            raise ToolError(f"no readable file {args.path!r} (code files end in {', '.join(sorted(CODE_SUFFIXES))}; "
                            "a folder lists its files)")
        return self._page(target.read_text(errors="replace"), args.offset, path)


def _cell(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    text = text.replace("\t", " ").replace("\n", "\\n")
    return text if len(text) <= 300 else text[:300] + f"...[{len(text) - 300} more]"


def _args_dict(args: Any) -> dict[str, str]:
    """A memory op's args as DuckDB returns the MAP column (a dict, or key/value lists)."""
    if isinstance(args, dict) and set(args) == {"key", "value"} and isinstance(args["key"], list):
        return dict(zip(args["key"], args["value"]))
    if isinstance(args, list):
        return {k: v for k, v in args}
    return dict(args or {})


def _args_text(args: Any) -> str:
    return json.dumps(_args_dict(args), ensure_ascii=False)
