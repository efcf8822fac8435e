"""report/svg.py and checkpoint/trainlog.py: the chart module on its own, and the log series it draws."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET

from nandoctor.checkpoint import trainlog
from nandoctor.report import svg


def parse(text: str) -> ET.Element:
    return ET.fromstring(text)


def test_line_chart_breaks_at_nonfinite_points_and_marks_them():
    points = [(0, 1.0), (1, 2.0), (2, math.nan), (3, math.inf), (4, 3.0), (5, 4.0)]
    root = parse(svg.line_chart([svg.Series("loss", points, "#000")], title="loss"))
    series = root.find(".//*[@class='series']")
    assert series is not None and series.get("data-points") == "6"
    assert len(series.findall(".//*[@class='nonfinite']")) == 2
    lines = series.findall("polyline")
    assert [len(p.get("points", "").split()) for p in lines] == [2, 2]  # two runs, none across the gap


def test_log_axis_is_chosen_for_wide_positive_ranges_and_forced_when_asked():
    wide = [svg.Series("max", [(0, 1e-2), (1, 1e6)], "#000")]
    assert "(log scale)" in svg.line_chart(wide, title="m")
    narrow = [svg.Series("loss", [(0, 0.0), (1, 2.0)], "#000")]
    assert "(log scale)" not in svg.line_chart(narrow, title="l")
    labels = {t.text for t in parse(svg.line_chart(wide, title="m", log_y=True)).iter("text")}
    assert {"0.01", "1e+06"} <= labels


def test_markers_and_labels_are_escaped_text():
    marker = svg.Marker(5, "<b>&", "#f00", tooltip="checkpoint-5: poisoned")
    root = parse(svg.line_chart([svg.Series("x<y", [(0, 1.0), (10, 2.0)], "#00f")], title="t&t", markers=[marker]))
    found = root.find(".//*[@class='marker']")
    assert found is not None and found.get("data-label") == "<b>&"  # (the parser decoded the escapes)
    assert root.find(".//b") is None


def test_an_empty_chart_says_so():
    assert "nothing logged" in svg.line_chart([], title="loss")


def test_heatmap_draws_a_cell_per_coloured_entry_with_its_tooltip():
    colours = [["#f00", "", "#0f0"], ["", "#0f0", "#0f0"]]
    tips = [["a 0", "", "a 2"], ["", "b 1", "b <2>"]]
    root = parse(svg.heatmap(["a", "b"], ["0", "1", "2"], colours, tips, title="grid"))
    cells = root.findall(".//*[@class='cell']")
    assert len(cells) == 4
    assert [(c.get("data-row"), c.get("data-col"), c.findtext("title")) for c in cells][-1] == ("1", "2", "b <2>")


def test_trainer_state_series_keeps_nan_and_skips_entries_without_numbers(tmp_path):
    state = tmp_path / "trainer_state.json"
    state.write_text('{"log_history": [{"step": 1, "loss": 2.0, "grad_norm": 1.0}, {"step": 2, "loss": NaN},'
                     ' {"step": 3, "eval_loss": 1.0}, {"step": "x", "loss": 1.0}, {"step": 4, "grad_norm": Infinity}]}')
    series = trainlog.from_trainer_state(state)
    assert series is not None
    assert [p.step for p in series.points] == [1, 2, 4]
    assert math.isnan(series.points[1].loss or 0.0) and series.points[2].grad_norm == math.inf


def test_lightning_metrics_csv_merges_rows_by_step_and_is_found_from_the_checkpoints_folder(tmp_path):
    version = tmp_path / "lightning_logs" / "version_3"
    (version / "checkpoints").mkdir(parents=True)
    (version / "metrics.csv").write_text(
        "epoch,grad_2.0_norm_total,step,train_loss,val_loss\n"
        "0,,9,0.5,\n0,1.5,9,,\n0,,19,nan,\n0,,19,,0.7\n"
    )
    (tmp_path / "lightning_logs" / "version_1").mkdir()
    (tmp_path / "lightning_logs" / "version_1" / "metrics.csv").write_text("step,loss\n1,9.0\n")
    for start in (tmp_path, version / "checkpoints"):
        series = trainlog.read_series(start)
        assert series is not None and series.source.endswith("version_3/metrics.csv"), start
    assert (series.loss_key, series.grad_key) == ("train_loss", "grad_2.0_norm_total")
    assert [(p.step, p.grad_norm) for p in series.points] == [(9, 1.5), (19, None)]
    assert series.points[0].loss == 0.5 and math.isnan(series.points[1].loss or 0.0)


def test_a_long_log_is_thinned_but_keeps_every_nonfinite_point(tmp_path, monkeypatch):
    monkeypatch.setattr(trainlog, "MAX_POINTS", 100)
    rows = "".join(f"{s},{'nan' if s in (333, 7777) else 1.0}\n" for s in range(10_000))
    (tmp_path / "metrics.csv").write_text("step,loss\n" + rows)
    series = trainlog.read_series(tmp_path)
    assert series is not None and series.thinned_from == 10_000
    assert len(series.points) <= 100 + 1 + 2  # the even spread, the last point, the two NaN
    nan_steps = [p.step for p in series.points if p.loss is not None and math.isnan(p.loss)]
    assert nan_steps == [333, 7777] and series.points[-1].step == 9999


def test_extreme_trainer_log_values_give_a_chart_not_an_internal_error():
    """A trial's trainer logs (subnormal or ±1e308 losses, steps of ±10**308 and 2 * 10**308) made `--html` exit 3
    with an internal error in the chart (log10 of 0, float of a 309-digit int, an infinite span)."""
    cases = [
        [(5, 5e-324), (6, 1e-323)],
        [(5, -1e308), (6, 1e308)],
        [(-10**308, 1.0), (10**308, 2.0)],
        [(0, 1.0), (2 * 10**308, 2.0)],
        [(0, 1e-320), (1, 1e308)],
    ]
    for points in cases:
        for log in (None, True, False):
            root = parse(svg.line_chart([svg.Series("loss", points, "#000")], title="loss", log_y=log,
                                        markers=[svg.Marker(points[-1][0], "bad", "#f00")]))
            for element in root.iter():
                for name in ("x", "y", "x1", "x2", "y1", "y2", "cx", "cy"):
                    value = element.get(name)
                    if value is not None:
                        assert math.isfinite(float(value)), (points, log, name, value)
