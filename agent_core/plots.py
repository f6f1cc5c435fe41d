"""Small PNG plots for reports (matplotlib, Agg: no screen), and markdown that shows them.

Each function returns a `Figure` (a file name and PNG bytes, ~20 KB). An empty series gives
a figure that says "no data" instead of failing the report. In the workspace a report links
its PNG files; in Prefect's UI the same markdown embeds them as `data:image/png;base64`
(the UI's sanitizer allows those in markdown artifacts).
"""

from __future__ import annotations

import base64
import io
import math
import re
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Figure:
    name: str  # file name, e.g. progression.png
    title: str
    png: bytes

    def markdown(self, inline: bool) -> str:
        """`![title](name.png)`, or with the PNG inline as a data URI."""
        src = "data:image/png;base64," + base64.b64encode(self.png).decode() if inline else self.name
        return f"![{self.title}]({src})"


def _figure(name: str, title: str, draw) -> Figure:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 3.0), dpi=80)
    try:
        if not draw(ax):
            ax.text(0.5, 0.5, "no data", ha="center", va="center", fontsize=14, color="grey",
                    transform=ax.transAxes)
            ax.set_xticks([])
            ax.set_yticks([])
        ax.set_title(title, fontsize=10)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
    finally:
        plt.close(fig)
    return Figure(name, title, buf.getvalue())


def bars_with_intervals(name: str, title: str, rows: list[tuple[str, float, float, float]],
                        ylabel: str = "progression") -> Figure:
    """One bar per (label, mean, ci_low, ci_high), with its interval as an error bar."""
    rows = [r for r in rows if not math.isnan(r[1])]

    def draw(ax) -> bool:
        if not rows:
            return False
        labels = [r[0] for r in rows]
        means = [r[1] for r in rows]
        err = [[max(0.0, r[1] - r[2]) for r in rows], [max(0.0, r[3] - r[1]) for r in rows]]
        ax.bar(range(len(rows)), means, yerr=err, capsize=4, color="#4C72B0")
        if min(r[2] for r in rows) >= 0:  # progressions and sizes: from zero, never a bare band
            ax.set_ylim(0, max(1.0, max(r[3] for r in rows)) * 1.05)
        ax.set_xticks(range(len(rows)), labels, rotation=20, ha="right", fontsize=8)
        ax.set_ylabel(ylabel, fontsize=9)
        return True

    return _figure(name, title, draw)


def lines(name: str, title: str, series: dict[str, list[tuple[float, float]]], xlabel: str,
          ylabel: str) -> Figure:
    """One line per label over (x, y) points."""
    series = {k: v for k, v in series.items() if v}

    def draw(ax) -> bool:
        if not series:
            return False
        for label, points in series.items():
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker="." if len(points) < 30 else None, label=label)
        ax.set_xlabel(xlabel, fontsize=9)
        ax.set_ylabel(ylabel, fontsize=9)
        ax.legend(fontsize=7)
        return True

    return _figure(name, title, draw)


def write_report(path: Path, markdown: str, figures: list[Figure]) -> str:
    """Write `path` (markdown linking the PNGs, written beside it) and return the same
    markdown with the PNGs inline, for a Prefect artifact. `markdown` places each figure
    where `{{figure:<name>}}` stands (figures without a place go at the end)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    trailing = []
    for fig in figures:
        on_disk = Figure(f"{path.stem}-{fig.name}", fig.title, fig.png)
        (path.parent / on_disk.name).write_bytes(fig.png)
        token = "{{figure:" + fig.name + "}}"
        if token in markdown:
            markdown = markdown.replace(token, on_disk.markdown(inline=False))
        else:
            trailing.append(on_disk.markdown(inline=False))
    markdown = "\n\n".join([markdown, *trailing]) + "\n"
    path.write_text(markdown)
    return inline_images(markdown, path.parent)


def inline_images(markdown: str, folder: Path) -> str:
    """`markdown` with every link to a PNG file in `folder` replaced by the PNG itself."""
    def embed(m: re.Match) -> str:
        png = folder / m.group(2)
        if not png.is_file():
            return m.group(0)
        return f"![{m.group(1)}](data:image/png;base64,{base64.b64encode(png.read_bytes()).decode()})"

    return re.sub(r"!\[([^\]]*)\]\(([^()/\s]+\.png)\)", embed, markdown)
