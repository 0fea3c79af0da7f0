"""The run report on a small synthetic run folder: files, and every summary number recomputed."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from report_fixture import DAY_S, START, make_run
from typer.testing import CliRunner

from stream.report import RecoverySettings, ReportOptions, build_report
from stream.report.__main__ import app
from stream.report.build import _axis_end, load_run
from stream.report.files import RunFolderError
from stream.report.style import model_styles
from stream.report.tables import recovery_table, summary_table

SHIFT_DAY = 12.0
OPTIONS = ReportOptions(
    mcnemar_window=200,
    min_events=1,
    recovery=RecoverySettings(pre_span_s=5 * DAY_S, horizon_s=10 * DAY_S, min_events=1),
)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = make_run(
        tmp_path_factory.mktemp("run"),
        n_users=30,
        n_events=1200,
        days=24,
        shift_day=SHIFT_DAY,
        cohort_size=10,
    )
    build_report(folder, OPTIONS)
    return folder


def test_report_writes_every_file(run_dir: Path) -> None:
    report = run_dir / "report"
    pngs = [
        "hr_at_10",
        "ndcg_at_10",
        "mrr",
        "mcnemar",
        "throughput_latency",
        "recovery_0",
        "shift_scores",
    ]
    for name in pngs:
        data = (report / f"{name}.png").read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", name
    for name in ["summary.csv", "mcnemar.csv", "recovery.csv", "flags.csv", "summary.md"]:
        assert (report / name).stat().st_size > 0, name
    page = (report / "report.html").read_text()
    markdown = (report / "summary.md").read_text()
    for name in pngs:
        assert f'src="{name}.png"' in page
        assert f"({name}.png)" in markdown


def test_summary_equals_direct_recomputation(run_dir: Path) -> None:
    events = pl.read_parquet(run_dir / "predictions.parquet")
    summary = pl.read_csv(run_dir / "report" / "summary.csv")
    markdown = (run_dir / "report" / "summary.md").read_text()
    cutoff = START + 4 * DAY_S  # the fixture's pretraining cutoff (manifest)
    assert summary.select("model", "scope").rows() == [
        (model, scope)
        for model in ["pop", "ttt4rec", "ttt4rec:frozen"]
        for scope in ["all events", "after pretraining cutoff"]
    ]
    for row in summary.iter_rows(named=True):
        mine = events.filter(pl.col("model") == row["model"])
        if row["scope"] == "after pretraining cutoff":
            mine = mine.filter(pl.col("time") >= cutoff)
            assert 0 < mine.height < events.filter(pl.col("model") == row["model"]).height
        assert row["n_events"] == mine.height
        assert row["n_users"] == len(set(mine["user"].to_list()))
        for label, column in [("hr@10", "hr@10"), ("ndcg@10", "ndcg@10"), ("mrr", "rr")]:
            values = mine[column].cast(pl.Float64).to_numpy()
            micro = values.mean()
            micro_ci = 1.96 * values.std(ddof=1) / np.sqrt(values.size)
            users = mine.group_by("user").agg(pl.col(column).cast(pl.Float64).mean())[column]
            macro = users.to_numpy().mean()
            macro_ci = 1.96 * users.to_numpy().std(ddof=1) / np.sqrt(users.len())
            assert row[f"micro_{label}"] == pytest.approx(micro, rel=1e-12)
            assert row[f"micro_{label}_ci"] == pytest.approx(micro_ci, rel=1e-12)
            assert row[f"macro_{label}"] == pytest.approx(macro, rel=1e-12)
            assert row[f"macro_{label}_ci"] == pytest.approx(macro_ci, rel=1e-12)
            assert f"{micro:.4f} ± {micro_ci:.4f}" in markdown
            assert f"{macro:.4f} ± {macro_ci:.4f}" in markdown
        first, last = mine.select(pl.col("produced_ms").min(), pl.col("written_ms").max()).row(0)
        span_s = (last - first) / 1000
        assert row["events_per_s"] == pytest.approx(mine.height / span_s, rel=1e-12)
        latency = mine["latency_ms"].to_numpy()
        assert row["latency_p50_ms"] == pytest.approx(np.percentile(latency, 50), rel=1e-12)
        assert row["latency_p99_ms"] == pytest.approx(np.percentile(latency, 99), rel=1e-12)
        assert f"{mine.height / span_s:.1f}" in markdown


def test_mcnemar_table_equals_direct_recomputation(run_dir: Path) -> None:
    events = pl.read_parquet(run_dir / "predictions.parquet")
    adaptive = events.filter(pl.col("model") == "ttt4rec").select("event_id", a="hr@10")
    frozen = events.filter(pl.col("model") == "ttt4rec:frozen").select("event_id", b="hr@10")
    paired = adaptive.join(frozen, on="event_id")
    n10 = paired.filter((pl.col("a") == 1) & (pl.col("b") == 0)).height
    n01 = paired.filter((pl.col("a") == 0) & (pl.col("b") == 1)).height
    table = pl.read_csv(run_dir / "report" / "mcnemar.csv")
    assert table.rows() == [
        (
            "ttt4rec",
            "ttt4rec:frozen",
            paired.height,
            n10,
            n01,
            pytest.approx(np.sign(n10 - n01) * (n10 - n01) ** 2 / (n10 + n01)),
        )
    ]


def test_recovery_table_levels_equal_direct_recomputation(run_dir: Path) -> None:
    events = pl.read_parquet(run_dir / "predictions.parquet")
    truth = pl.read_parquet(run_dir / "ground_truth.parquet")
    shift = float(truth["shift_time"][0])
    cohort = truth["user"].to_list()
    table = pl.read_csv(run_dir / "report" / "recovery.csv")
    assert table.height == 6  # 3 models x (shifted cohort, stable users)
    for row in table.iter_rows(named=True):
        in_group = pl.col("user").is_in(cohort)
        if row["group"] == "stable users":
            in_group = ~in_group
        mine = events.filter((pl.col("model") == row["model"]) & in_group)
        pre = mine.filter((pl.col("time") >= shift - 5 * DAY_S) & (pl.col("time") < shift))
        assert row["pre_level"] == pytest.approx(pre["hr@10"].cast(pl.Float64).mean(), rel=1e-12)
        post = mine.filter((pl.col("time") >= shift) & (pl.col("time") < shift + 10 * DAY_S))
        daily = post.group_by(((pl.col("time") - shift) // DAY_S).alias("day")).agg(
            pl.col("hr@10").cast(pl.Float64).mean()
        )
        assert row["max_drop"] == pytest.approx(row["pre_level"] - daily["hr@10"].min(), rel=1e-9)
    frozen = table.filter(pl.col("model") == "ttt4rec:frozen")
    drops = dict(zip(frozen["group"], frozen["max_drop"], strict=True))
    assert drops["shifted cohort"] > drops["stable users"]  # the fixture only hurts the cohort


def test_report_without_windows_truth_or_twin(tmp_path: Path) -> None:
    folder = make_run(
        tmp_path, n_users=10, n_events=300, days=6, shift_day=3, cohort_size=3, with_windows=False
    )
    (folder / "ground_truth.parquet").unlink()
    events = pl.read_parquet(folder / "predictions.parquet")
    events.filter(pl.col("model") != "ttt4rec:frozen").write_parquet(folder / "predictions.parquet")
    written = build_report(folder, OPTIONS)
    names = {p.name for p in written}
    assert not names & {"recovery.csv", "recovery_0.png", "mcnemar.png", "mcnemar.csv"}
    assert {"hr_at_10.png", "summary.md", "report.html", "summary.csv", "shift_scores.png"} <= names
    markdown = (folder / "report" / "summary.md").read_text()
    assert "Shift recovery" not in markdown
    assert "No adaptive model has its frozen twin" in markdown
    assert "Window 86400 s." in markdown  # windows computed here, size from the manifest
    summary = pl.read_csv(folder / "report" / "summary.csv")
    assert summary["model"].to_list() == ["pop", "pop", "ttt4rec", "ttt4rec"]


def test_duplicate_rows_are_counted_and_dropped(tmp_path: Path) -> None:
    folder = make_run(tmp_path, n_users=10, n_events=300, days=6, shift_day=3, cohort_size=3)
    events = pl.read_parquet(folder / "predictions.parquet")
    folder_parts = folder / "predictions"
    folder_parts.mkdir()
    events.write_parquet(folder_parts / "part-0.parquet")
    events.head(7).write_parquet(folder_parts / "part-1.parquet")  # redelivered rows
    (folder / "predictions.parquet").unlink()
    data = load_run(folder)
    assert data.duplicates == 7
    assert summary_table(data.predictions)["n_events"].to_list() == [300, 300, 300]
    assert data.pretrain_cutoff == START + 4 * DAY_S


def test_missing_predictions_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(RunFolderError, match="no predictions"):
        build_report(tmp_path)
    pl.DataFrame({"model": ["pop"], "event_id": [0]}).write_parquet(
        tmp_path / "predictions.parquet"
    )
    with pytest.raises(RunFolderError, match="lacks the column.*user.*rr"):
        build_report(tmp_path)
    with pytest.raises(RunFolderError, match="does not exist"):
        build_report(tmp_path / "absent")


def test_cli(run_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("report"))
    result = CliRunner().invoke(app, [str(copy), "--mcnemar-window", "50", "--min-events", "1"])
    assert result.exit_code == 0, result.output
    assert (copy / "report" / "report.html").is_file()
    missing = CliRunner().invoke(app, [str(tmp_path / "absent")])
    assert missing.exit_code == 2
    assert "does not exist" in missing.output
    bad_metric = CliRunner().invoke(app, [str(copy), "--metric", "auc"])
    assert bad_metric.exit_code == 2
    assert "unknown metric 'auc'" in bad_metric.output


def test_model_styles_pair_frozen_twins() -> None:
    styles = model_styles(["pop", "sasrec", "t2arec", "t2arec:frozen", "newmodel"])
    assert styles["t2arec:frozen"]["color"] == styles["t2arec"]["color"]
    assert (styles["t2arec"]["linestyle"], styles["t2arec:frozen"]["linestyle"]) == ("-", "--")
    colours = [styles[m]["color"] for m in ["pop", "sasrec", "t2arec", "newmodel"]]
    assert len(set(colours)) == 4
    assert model_styles(["sasrec"])["sasrec"] == styles["sasrec"]  # fixed, not by position


def test_fixture_event_times_start_where_expected() -> None:
    assert np.datetime64(int(START), "s") == np.datetime64("2000-06-03T02:40:00")


def test_flags_equal_direct_recomputation(run_dir: Path) -> None:
    events = pl.read_parquet(run_dir / "predictions.parquet")
    flags = pl.read_csv(run_dir / "report" / "flags.csv")
    expected = {}
    for (model,), mine in events.filter(pl.col("shift_score").is_not_null()).group_by("model"):
        scores = mine["shift_score"].to_numpy()
        mu, sd = scores.mean(), scores.std(ddof=1)
        days = np.floor(mine["time"].to_numpy() / DAY_S)
        for day in np.unique(days):
            window = scores[days == day]
            z = (window.mean() - mu) * np.sqrt(window.size) / sd
            if z > OPTIONS.flag_k and window.size >= OPTIONS.min_events:
                expected[(model, day * DAY_S)] = z
    found = {(m, s): z for m, s, z in flags.select("model", "window_start", "z").iter_rows()}
    assert found.keys() == expected.keys()
    for key, z in expected.items():
        assert found[key] == pytest.approx(z, rel=1e-9)
    shift_day = np.floor((START + SHIFT_DAY * DAY_S) / DAY_S) * DAY_S
    assert {("ttt4rec", shift_day), ("ttt4rec:frozen", shift_day)} <= found.keys()
    assert "pop" not in flags["model"].to_list()  # no shift score, never flagged


def test_two_shift_times_and_mrr(tmp_path: Path) -> None:
    folder = make_run(tmp_path, n_users=20, n_events=1000, days=16, shift_day=8, cohort_size=12)
    truth = pl.read_parquet(folder / "ground_truth.parquet")
    later = pl.col("user") > 6
    truth = truth.with_columns(
        pl.when(later).then(pl.col("shift_time") + 3 * DAY_S).otherwise(pl.col("shift_time"))
    )
    truth.write_parquet(folder / "ground_truth.parquet")
    options = ReportOptions(
        recovery=RecoverySettings(
            metric="mrr", pre_span_s=4 * DAY_S, horizon_s=4 * DAY_S, min_events=1
        ),
    )
    events = pl.read_parquet(folder / "predictions.parquet")
    table, _ = recovery_table(events.lazy(), truth, options.recovery)
    assert table["shift_time"].n_unique() == 2
    for shift, cohort in truth.group_by("shift_time").agg("user").iter_rows():
        stable = table.filter(
            (pl.col("shift_time") == shift)
            & (pl.col("group") == "stable users")
            & (pl.col("model") == "pop")
        )
        # stable users: in no ground-truth row at all, so neither cohort counts
        pre = events.filter(
            (pl.col("model") == "pop")
            & ~pl.col("user").is_in(truth["user"].to_list())
            & (pl.col("time") >= shift - 4 * DAY_S)
            & (pl.col("time") < shift)
        )
        assert stable["pre_level"][0] == pytest.approx(pre["rr"].mean(), rel=1e-12)
        shifted = table.filter(
            (pl.col("shift_time") == shift)
            & (pl.col("group") == "shifted cohort")
            & (pl.col("model") == "pop")
        )
        pre_cohort = events.filter(
            (pl.col("model") == "pop")
            & pl.col("user").is_in(cohort)
            & (pl.col("time") >= shift - 4 * DAY_S)
            & (pl.col("time") < shift)
        )
        assert shifted["pre_level"][0] == pytest.approx(pre_cohort["rr"].mean(), rel=1e-12)


def test_shift_without_measurable_recovery(tmp_path: Path) -> None:
    folder = make_run(tmp_path, n_users=10, n_events=300, days=6, shift_day=3, cohort_size=3)
    truth = pl.read_parquet(folder / "ground_truth.parquet")
    truth.with_columns(pl.lit(START + 60 * DAY_S).alias("shift_time")).write_parquet(
        folder / "ground_truth.parquet"
    )  # after the last event: nothing to measure after the shift
    names = {p.name for p in build_report(folder, OPTIONS)}
    assert not names & {"recovery.csv", "recovery_0.png"}
    assert "Injected shift at 2000-08-02" in (folder / "report" / "summary.md").read_text()


def test_event_time_axis_leaves_out_a_sparse_tail(tmp_path: Path) -> None:
    folder = make_run(tmp_path, n_users=10, n_events=300, days=6, shift_day=3, cohort_size=3)
    events = pl.read_parquet(folder / "predictions.parquet")
    late = events.filter(pl.col("event_id") == 299).with_columns(
        pl.lit(300, dtype=pl.Int64).alias("event_id"), pl.lit(START + 400 * DAY_S).alias("time")
    )
    pl.concat([events, late]).write_parquet(folder / "predictions.parquet")
    data = load_run(folder)
    times = np.sort(events.filter(pl.col("model") == "pop")["time"].to_numpy())
    end = _axis_end(data, 0.99)
    assert end is not None and times[0] < end <= times[-1]
    assert _axis_end(data, 1.0) is None
    (tmp_path / "even").mkdir()
    assert _axis_end(load_run(make_run(tmp_path / "even", n_events=300)), 0.99) is None
