"""Rows on the terminal: a table where it fits the console's width, else one record per block
(`name  value` lines, a rule between records), so wide results stay readable at 80 columns;
or csv / json on stdout for other programs."""

from __future__ import annotations

import csv
import json
import sys
from typing import Any, Iterable, Optional, Sequence

from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text


def _cell(value: Any, cut: Optional[int]) -> Text:
    text = value if isinstance(value, str) else str(value)
    return Text(text if cut is None or len(text) <= cut else text[:cut])


def fits(console: Console, table: Table) -> bool:
    """Whether `table` fits the console's width without breaking a word (its header's
    included): rich would otherwise squeeze its columns down to slivers."""
    unbounded = console.options.update_width(1 << 20)  # the table's own minimum, not clamped to the width
    return Measurement.get(console, unbounded, table).minimum <= console.width


def print_rows(console: Console, columns: Sequence[str], rows: Iterable[Sequence[Any]], *,
               title: Optional[str] = None, cut: Optional[int] = None) -> None:
    """`rows` (values in `columns` order, each shown as text, at most `cut` characters) as a
    table where it fits `console`, else as records."""
    rows = [[_cell(v, cut) for v in row] for row in rows]
    table = Table(*columns, title=title)
    for row in rows:
        table.add_row(*row)
    if fits(console, table):
        console.print(table)
        return
    if title:
        console.print(Text(title, style="italic"), justify="center")
    if not rows:
        console.print(Text(f"no rows (columns: {', '.join(columns)})", style="dim"))
    for i, row in enumerate(rows, 1):
        console.rule(Text(f"record {i} of {len(rows)}", style="dim"), style="dim")
        record = Table.grid(padding=(0, 2))
        record.add_column(style="bold", no_wrap=True)
        record.add_column(overflow="fold")
        for name, value in zip(columns, row):
            record.add_row(Text(name), value)
        console.print(record)


def write_csv(columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """`rows` as csv on stdout, a header line first (None: an empty field)."""
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(rows)


def write_json(columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """`rows` as a JSON list of objects on stdout (values JSON cannot hold: as text)."""
    json.dump([dict(zip(columns, row)) for row in rows], sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")
