"""How a report table's columns give way on a narrow terminal: names fold whole onto more lines (never cut, never
"…": a cut tensor name cannot be searched for or pasted), numbers never break nor are cut (``1e+30`` must not show
as ``1e+``), other text gives way first. One rule for every table of the console reports."""

from __future__ import annotations

from rich.table import Table


def add_column(table: Table, header: str, *, numeric: bool = False, name: bool = False, widest: int = 0) -> None:
    """Add ``header``'s column: a name (``name``), a number (``numeric``; ``widest``: its longest value) or text."""
    if name:
        table.add_column(header, overflow="fold", min_width=20, ratio=3)
    elif numeric:
        table.add_column(header, justify="right", no_wrap=True, min_width=max(widest, len(header)))
    else:
        table.add_column(header, overflow="fold", ratio=1)
