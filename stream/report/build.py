"""Turn a run folder into ``RUN_DIR/report/``: PNG figures, ``summary.md``, ``report.html`` and
the tables as CSV (``summary.csv``, ``mcnemar.csv``, ``recovery.csv``, ``flags.csv``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from stream.aggregate import PREDICTION_SCHEMA, window_table
from stream.report.files import RunFiles, RunFolderError, read_manifest, scan
from stream.report.measures import signed_mcnemar
from stream.report.plots import DAY_S, Marks, Styles, mcnemar_figure, metric_figure, system_figure
from stream.report.render import html_page, markdown
from stream.report.sections import sections_for
from stream.report.shiftplots import recovery_figure, shift_score_figure
from stream.report.style import model_styles
from stream.report.tables import (
    RecoverySettings,
    flagged_windows,
    frozen_pairs,
    mcnemar_series,
    metric_column,
    paired_hits,
    recovery_table,
    shift_score_windows,
    summary_table,
    throughput_series,
)

DEFAULT_HALF_LIFE_S = 7 * DAY_S
PLOTTED_METRICS = ("hr@10", "ndcg@10", "mrr")


@dataclass(frozen=True)
class ReportOptions:
    mcnemar_window: int = 1_000  # paired events per sliding McNemar window
    flag_k: float = 3.0  # z above which a window's mean shift score is flagged
    min_events: int = 20  # windows with fewer events are not drawn, flagged or used for recovery
    time_quantile: float = 0.95  # event-time axes end at this quantile of event time (1: all)
    recovery: RecoverySettings = field(default_factory=RecoverySettings)


@dataclass
class RunData:
    """Everything the figures and tables are made from, read once."""

    files: RunFiles
    predictions: pl.LazyFrame
    windows: pl.DataFrame
    truth: pl.DataFrame | None
    models: list[str]
    window_s: float
    half_life_s: float | None
    duplicates: int  # (model, event) rows found more than once in the predictions files
    sink: dict[str, Any]  # the sink's own summary (sink.json), {} when absent
    time_span: tuple[float, float]  # first and last event time, epoch seconds
    pretrain_cutoff: float | None  # checkpoints were trained on events before this event time


def _setting(manifest: dict[str, Any], *names: str) -> float | None:
    scopes = [manifest, *(manifest.get(k) or {} for k in ("settings", "config", "sink"))]
    for scope in scopes:
        for name in names:
            value = scope.get(name) if isinstance(scope, dict) else None
            if isinstance(value, int | float) and value > 0:
                return float(value)
    return None


def load_run(run_dir: Path) -> RunData:
    files = RunFiles.from_dir(run_dir)
    manifest = read_manifest(files.manifest)
    raw = scan(files.predictions)
    missing = [c for c in PREDICTION_SCHEMA if c not in raw.collect_schema().names()]
    if missing:
        raise RunFolderError(f"{files.predictions} lacks the column(s) {', '.join(missing)}")
    counts = raw.select(
        pl.len().alias("rows"), pl.struct("model", "event_id").n_unique().alias("n")
    )
    rows, distinct = counts.collect().row(0)
    # at-least-once delivery: a redelivered (model, event) row is counted, then kept once
    predictions = raw.unique(subset=["model", "event_id"], keep="first") if rows > distinct else raw
    models = sorted(predictions.select(pl.col("model").unique()).collect()["model"].to_list())
    if not models:
        raise RunFolderError(f"{files.predictions} holds no predictions")
    half_life = _setting(manifest, "half_life_s", "fading_half_life_s")
    windows = scan(files.windows).collect() if files.windows is not None else pl.DataFrame()
    if windows.height:
        (window_s,) = windows.select((pl.col("window_end") - pl.col("window_start")).max()).row(0)
    else:  # no sink windows (or an empty file): aggregate here, as the sink would
        window_s = _setting(manifest, "window_s", "window_size_s") or DAY_S
        half_life = half_life or DEFAULT_HALF_LIFE_S
        windows = window_table(predictions.collect(), size_s=window_s, half_life_s=half_life)
    truth = pl.read_parquet(files.ground_truth) if files.ground_truth else None
    if truth is not None:
        absent = {"user", "shift_time", "kind", "width"} - set(truth.columns)
        if absent:
            raise RunFolderError(f"{files.ground_truth} lacks {', '.join(sorted(absent))}")
    sink = read_manifest(files.sink_summary)
    span = predictions.select(pl.col("time").min().alias("lo"), pl.col("time").max().alias("hi"))
    lo, hi = span.collect().row(0)
    cutoff = manifest.get("pretrain_cutoff_time")
    return RunData(
        files=files,
        predictions=predictions,
        windows=windows,
        truth=truth,
        models=models,
        window_s=window_s,
        half_life_s=half_life,
        duplicates=rows - distinct,
        sink=sink,
        time_span=(lo, hi),
        pretrain_cutoff=float(cutoff) if isinstance(cutoff, int | float) else None,
    )


def whole_run_mcnemar(data: RunData) -> pl.DataFrame:
    rows = []
    for adaptive, frozen in frozen_pairs(data.models):
        paired = paired_hits(data.predictions, adaptive, frozen)
        a, b = paired["a"].to_numpy().astype(bool), paired["b"].to_numpy().astype(bool)
        n10, n01 = int((a & ~b).sum()), int((~a & b).sum())
        rows.append(
            {
                "model": adaptive,
                "frozen": frozen,
                "n_paired": paired.height,
                "n10": n10,
                "n01": n01,
                "statistic": signed_mcnemar(n10, n01),
            }
        )
    return pl.DataFrame(rows) if rows else pl.DataFrame()


def shifts_of(truth: pl.DataFrame | None) -> pl.DataFrame:
    if truth is None or truth.height == 0:
        return pl.DataFrame(
            schema={
                "shift_time": pl.Float64,
                "kind": pl.String,
                "width": pl.Float64,
                "n_users": pl.UInt32,
            }
        )
    # one row per shift time; kinds that share it (a "mixed" synthetic shift) are joined
    return (
        truth.group_by("shift_time")
        .agg(
            pl.col("kind").unique().sort().str.join("+"),
            pl.col("width").max(),
            pl.len().alias("n_users"),
        )
        .sort("shift_time")
    )


def build_report(run_dir: Path, options: ReportOptions | None = None) -> list[Path]:
    """Write ``run_dir/report/`` and return the files written (earlier outputs are replaced)."""
    options = options or ReportOptions()
    metric_column(options.recovery.metric)  # a bad name fails before any work
    data = load_run(run_dir)
    out = data.files.report_dir
    out.mkdir(parents=True, exist_ok=True)
    for stale in [*out.glob("*.png"), *out.glob("*.csv"), out / "summary.md", out / "report.html"]:
        stale.unlink(missing_ok=True)
    styles = model_styles(data.models)
    shifts = shifts_of(data.truth)
    pretrain = None if data.pretrain_cutoff is None else (data.time_span[0], data.pretrain_cutoff)
    marks = Marks(shifts, pretrain, _axis_end(data, options.time_quantile))
    cohort = [] if data.truth is None else data.truth["user"].unique().sort().to_list()
    flags = flagged_windows(data.predictions, data.window_s, options.flag_k, options.min_events)
    figures = {
        "metrics": _metric_figures(data, styles, marks, flags, options, out),
        "mcnemar": _mcnemar_figures(data, styles, marks, cohort, options, out),
        "system": [
            system_figure(
                throughput_series(data.predictions), styles, out / "throughput_latency.png"
            )
        ],
    }
    recovery = pl.DataFrame()
    figures["shift"] = []
    if data.truth is not None and data.truth.height:
        recovery, series = recovery_table(data.predictions, data.truth, options.recovery)
        drawn: list[float] = (
            recovery["shift_time"].unique(maintain_order=True).to_list() if recovery.height else []
        )
        for position, shift_time in enumerate(drawn):
            path = out / f"recovery_{position}.png"
            figures["shift"].append(
                recovery_figure(series, recovery, styles, options.recovery, shift_time, path)
            )
    scores = shift_score_windows(data.predictions, cohort, data.window_s, 0.0).filter(
        pl.col("n") >= options.min_events
    )
    if scores.height:
        path = out / "shift_scores.png"
        label = _window_label(data.window_s)
        figures["shift"].append(shift_score_figure(scores, styles, marks, flags, label, path))
    summary = summary_table(data.predictions, data.pretrain_cutoff)
    whole = whole_run_mcnemar(data)
    tables = {"summary": summary, "mcnemar": whole, "recovery": recovery, "flags": flags}
    written = [p for group in figures.values() for p in group]
    for name, frame in tables.items():
        if frame.width:
            frame.write_csv(out / f"{name}.csv")
            written.append(out / f"{name}.csv")
    sections = sections_for(
        data, summary, whole, recovery, flags, shifts, figures, options, marks.until
    )
    title = f"Run report: {run_dir.resolve().name}"
    (out / "summary.md").write_text(markdown(title, sections))
    (out / "report.html").write_text(html_page(title, sections))
    return [*written, out / "summary.md", out / "report.html"]


def _axis_end(data: RunData, quantile: float) -> float | None:
    """Event time at ``quantile`` of the events, when the rest is a sparse tail: it covers more
    than twice its share of events in time (and at least 5% of the span)."""
    if quantile >= 1.0:
        return None
    (end,) = data.predictions.select(pl.col("time").quantile(quantile, "higher")).collect().row(0)
    first, last = data.time_span
    sparse = last - end > max(0.05, 2 * (1 - quantile)) * (last - first)
    return float(end) if sparse else None


def _window_label(window_s: float) -> str:
    return f"{window_s / DAY_S:g}-day" if window_s >= 3600 else f"{window_s:g}-s"


def _metric_figures(
    data: RunData,
    styles: Styles,
    marks: Marks,
    flags: pl.DataFrame,
    options: ReportOptions,
    out: Path,
) -> list[Path]:
    half_life = f"{data.half_life_s / DAY_S:g} days" if data.half_life_s else "as set by the sink"
    return [
        metric_figure(
            data.windows,
            metric,
            styles,
            marks,
            flags,
            _window_label(data.window_s),
            half_life,
            options.min_events,
            out / f"{metric.replace('@', '_at_')}.png",
        )
        for metric in PLOTTED_METRICS
    ]


def _mcnemar_figures(
    data: RunData,
    styles: Styles,
    marks: Marks,
    cohort: list[int],
    options: ReportOptions,
    out: Path,
) -> list[Path]:
    pairs = frozen_pairs(data.models)
    if not pairs:
        return []
    series = mcnemar_series(data.predictions, pairs, options.mcnemar_window, cohort)
    return [mcnemar_figure(series, styles, marks, options.mcnemar_window, out / "mcnemar.png")]
