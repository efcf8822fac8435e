"""Heatmap grids for the reports: layers × components of one checkpoint (HTML and console), layers × checkpoints
of a run (HTML).

A cell takes the colour of the worst finding among its tensors (``summary.worst_finding``
over what verdict.py decided). Grids are capped: past ``MAX_COLUMNS`` layers or
checkpoints, or ``MAX_ROWS`` layer groups, neighbours share a cell (its worst), so a
checkpoint of 100k tensors or a run of 1,000 saves still gives a page of a few MB at most.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from nandoctor.checkpoint.runs import RunReport
from nandoctor.layers import COMPONENTS, component_of, layer_of, natural_key
from nandoctor.model import ScanReport
from nandoctor.report.summary import CLEAN, SEVERITY, worst_finding

MAX_COLUMNS = 160
MAX_ROWS = 120
MAX_STACKS = 6
COLOURS = {
    "nonfinite": "#d62728",
    "exploded": "#7b1fa2",
    "outlier": "#ff7f0e",
    "overflow": "#f2c12e",
    "zeroed": "#8d8d8d",
    CLEAN: "#a5d6a7",
    "not scanned": "#e0e0e0",
}
LEGEND = ("nonfinite", "exploded", "outlier", "overflow", "zeroed", CLEAN)


@dataclass(frozen=True)
class Grid:
    """Rows × columns of findings ("" where nothing is), with a tooltip per cell."""

    title: str
    rows: list[str]
    columns: list[str]
    cells: list[list[str]]
    tooltips: list[list[str]]

    def colours(self) -> list[list[str]]:
        return [[COLOURS.get(c, "") for c in row] for row in self.cells]


def _worse(a: str, b: str) -> str:
    """The more severe of two cell values ("" < clean < zeroed < … < nonfinite; "not scanned" above clean)."""
    order = ("", CLEAN, "not scanned", *reversed(SEVERITY))
    return a if order.index(a) >= order.index(b) else b


def _bins(n: int, limit: int) -> list[range]:
    size = max(1, math.ceil(n / limit))
    return [range(start, min(n, start + size)) for start in range(0, n, size)]


def _binned(labels: Sequence[str], cells: list[list[str]], limit: int, axis: int) -> tuple[list[str], list[list[str]]]:
    """Merge neighbouring rows (axis 0) or columns (axis 1) into at most ``limit``, keeping each one's worst."""
    if len(labels) <= limit:
        return list(labels), cells
    groups = _bins(len(labels), limit)
    names = [labels[g[0]] if len(g) == 1 else f"{labels[g[0]]} … {labels[g[-1]]}" for g in groups]
    if axis == 0:
        merged = []
        for g in groups:
            row = [""] * len(cells[0])
            for r in g:
                row = [_worse(a, b) for a, b in zip(row, cells[r])]
            merged.append(row)
        return names, merged
    out = []
    for row in cells:
        new = []
        for g in groups:
            value = ""
            for c in g:
                value = _worse(value, row[c])
            new.append(value)
        out.append(new)
    return names, out


def _tooltips(rows: list[str], columns: list[str], cells: list[list[str]], where: str) -> list[list[str]]:
    return [[f"{r} {where} {c}: {cell}" if cell else "" for c, cell in zip(columns, row)] for r, row in zip(rows, cells)]


_NOT_LAYERED = ("optimizer", "trainer")  # optimizer.state.N numbers parameters, not layers: no grid of layers


def checkpoint_grids(report: ScanReport) -> tuple[list[Grid], dict[str, str]]:
    """Per layer stack of the model, a components × layers grid; plus the worst finding of each group outside the
    stacks. Optimizer and trainer state are left out (its numbers are parameters', not layers')."""
    stacks: dict[str, dict[tuple[str, int], str]] = {}
    sizes: dict[str, int] = {}
    outside: dict[str, str] = {}
    tensors = report.tensors  # (its columns: no TensorResult made per tensor)
    for name, role, findings in zip(tensors.refs.names, tensors.refs.roles, tensors.findings):
        if role in _NOT_LAYERED:
            continue
        key = layer_of(name)
        finding = worst_finding(findings)
        if key.stack is None or key.index is None:
            outside[key.group] = _worse(outside.get(key.group, ""), finding)
            continue
        cell = (component_of(name), key.index)
        grid = stacks.setdefault(key.stack, {})
        grid[cell] = _worse(grid.get(cell, ""), finding)
        sizes[key.stack] = max(sizes.get(key.stack, 0), key.index + 1)
    # The stacks with damage first, then the largest: a model has one or two, an optimizer state one more.
    order = sorted(stacks, key=lambda s: (-sum(v not in ("", CLEAN) for v in stacks[s].values()), -sizes[s], s))
    grids = []
    for stack in order[:MAX_STACKS]:
        cells_of = stacks[stack]
        components = [c for c in COMPONENTS if any(k[0] == c for k in cells_of)]
        columns = [str(i) for i in range(sizes[stack])]
        cells = [[cells_of.get((comp, i), "") for i in range(sizes[stack])] for comp in components]
        columns, cells = _binned(columns, cells, MAX_COLUMNS, axis=1)
        tips = _tooltips(components, [f"layer {c}" for c in columns], cells, "in")
        grids.append(Grid(f"{stack}: component × layer", components, columns, cells, tips))
    return grids, dict(sorted(outside.items(), key=lambda kv: natural_key(kv[0])))


def run_grid(run: RunReport) -> Grid | None:
    """Layer groups × checkpoints: where the damage began and how it spread."""
    columns = [c.name if c.final or c.last else str(c.step) for c in run.checkpoints]
    per_checkpoint: list[dict[str, str] | None] = []
    groups: set[str] = set()
    for c in run.checkpoints:
        if c.report is None:
            per_checkpoint.append(None)
            continue
        worst: dict[str, str] = {}
        refs = c.report.tensors.refs
        for name, role, findings in zip(refs.names, refs.roles, c.report.tensors.findings):
            if role not in _NOT_LAYERED:
                group = layer_of(name).group
                worst[group] = _worse(worst.get(group, ""), worst_finding(findings))
        groups.update(worst)
        per_checkpoint.append(worst)
    if not groups:
        return None
    rows = sorted(groups, key=natural_key)
    cells = [[("not scanned" if col is None else col.get(r, "")) for col in per_checkpoint] for r in rows]
    rows, cells = _binned(rows, cells, MAX_ROWS, axis=0)
    columns, cells = _binned(columns, cells, MAX_COLUMNS, axis=1)
    tips = _tooltips(rows, [f"step {c}" for c in columns], cells, "at")
    return Grid("layer × checkpoint (step)", rows, columns, cells, tips)
