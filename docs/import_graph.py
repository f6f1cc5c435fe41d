"""The import graphs drawn in docs/architecture.md, made from the code itself (grimp, the
graph import-linter checks): the layers, and the modules of agent_core with the games.

    python docs/import_graph.py           # print both mermaid blocks
    python docs/import_graph.py --write   # rewrite them in docs/architecture.md

Each graph is the transitive reduction of the real imports (an arrow a --> b: a imports b,
and no longer path says so already), with every subpackage of agent_core drawn as one box.
tests/test_architecture.py fails when the document's graphs are not the code's.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "architecture.md"
LAYERS = ("automem_cli", "flows", "tasks", "agent_core", "environments")
#: the markers around each generated block in the document
BLOCKS = ("layers", "agent_core")


def _reduce(edges: set[tuple[str, str]]) -> set[tuple[str, str]]:
    """The transitive reduction of an acyclic graph: drop a --> b when another path leads there."""
    succ: dict[str, set[str]] = {}
    for a, b in edges:
        succ.setdefault(a, set()).add(b)

    def reachable(a: str, without: tuple[str, str]) -> set[str]:
        seen: set[str] = set()
        todo = [x for x in succ.get(a, ()) if (a, x) != without]
        while todo:
            x = todo.pop()
            if x not in seen:
                seen.add(x)
                todo.extend(succ.get(x, ()))
        return seen

    return {(a, b) for a, b in edges if b not in reachable(a, (a, b))}


def _edges(graph: grimp.ImportGraph, box) -> set[tuple[str, str]]:  # noqa: ANN001
    """Imports between boxes (`box(module)` names a module's box, None: not drawn)."""
    out = set()
    for module in graph.modules:
        a = box(module)
        for imported in graph.find_modules_directly_imported_by(module):
            b = box(imported)
            if a and b and a != b:
                out.add((a, b))
    return out


def _mermaid(edges: set[tuple[str, str]], packages: set[str]) -> str:
    """A mermaid flowchart: each box once (a package's name ends in /), then the arrows."""
    def name(box: str) -> str:
        short = box.removeprefix("agent_core.")
        return short + "/" if box in packages else short

    boxes = sorted({box for edge in edges for box in edge})
    lines = ["```mermaid", "flowchart TD"]
    lines += [f"    {b.replace('.', '_')}[\"{name(b)}\"]" for b in boxes]
    lines += [f"    {a.replace('.', '_')} --> {b.replace('.', '_')}" for a, b in sorted(edges)]
    return "\n".join(lines + ["```"])


def graphs() -> dict[str, str]:
    """Block name -> its mermaid text, from the code as it is now."""
    graph = grimp.build_graph(*LAYERS)
    packages = {m for m in graph.modules if graph.find_children(m)}
    layers = _edges(graph, lambda m: m.split(".")[0])

    def agent_core_box(module: str) -> str | None:
        parts = module.split(".")
        if parts[0] == "environments":
            return "environments"
        return ".".join(parts[:2]) if parts[0] == "agent_core" and len(parts) > 1 else None

    return {"layers": _mermaid(_reduce(layers), packages),
            "agent_core": _mermaid(_reduce(_edges(graph, agent_core_box)), packages)}


def _pattern(name: str) -> re.Pattern[str]:
    return re.compile(rf"(<!-- import-graph:{name} -->\n)(.*?)(<!-- /import-graph:{name} -->)", re.S)


def documented() -> dict[str, str]:
    """Block name -> the mermaid text docs/architecture.md shows."""
    text = DOC.read_text()
    found = {name: _pattern(name).search(text) for name in BLOCKS}
    missing = [name for name, m in found.items() if m is None]
    if missing:
        raise ValueError(f"docs/architecture.md has no import-graph block {missing}; "
                         "add '<!-- import-graph:NAME -->' ... '<!-- /import-graph:NAME -->'")
    return {name: m.group(2).rstrip("\n") for name, m in found.items()}  # type: ignore[union-attr]


def write() -> None:
    text = DOC.read_text()
    for name, block in graphs().items():
        text = _pattern(name).sub(lambda m: m.group(1) + block + "\n" + m.group(3), text)
    DOC.write_text(text)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help="rewrite the blocks in docs/architecture.md")
    if parser.parse_args().write:
        write()
    else:
        print("\n\n".join(graphs().values()))
