"""The command line: help wording, usage errors (exit 2), dry runs, malformed input, no broker."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from replay.cli import app, parse_duration
from stream.broker import free_port

runner = CliRunner()


def flat(text: str) -> str:
    return " ".join(text.split())


def test_help_says_the_factor_divides_gaps() -> None:
    top = runner.invoke(app, ["--help"])
    assert top.exit_code == 0
    assert "ml-1m" in top.output and "synthetic" in top.output and "file" in top.output
    assert "--speed 100x DIVIDES every event-time gap by 100" in flat(top.output)
    sub = runner.invoke(app, ["ml-1m", "--help"])
    assert sub.exit_code == 0
    assert "A factor like 100x DIVIDES every event-time gap by 100" in flat(sub.output)
    for option in ("--max-gap", "--from-event", "--inject-at", "--cohort-frac", "--dry-run"):
        assert option in sub.output
    file_help = flat(runner.invoke(app, ["file", "--help"]).output)
    assert "--user-col" in file_help and "--time-unit" in file_help


@pytest.mark.parametrize("speed", ["fast", "0x", "-3x", "10y"])
def test_bad_speed_is_a_usage_error(speed: str) -> None:
    result = runner.invoke(app, ["synthetic", "--speed", speed, "--dry-run"])
    assert result.exit_code == 2
    assert "--speed" in result.stderr and "divided" in result.stderr


def test_unknown_dataset_lists_the_known_ones() -> None:
    result = runner.invoke(app, ["ml-20m"])
    assert result.exit_code == 2
    assert "unknown dataset 'ml-20m'" in result.stderr
    assert "ml-1m, file PATH, synthetic" in result.stderr


@pytest.mark.parametrize(
    "args,needle",
    [
        (["synthetic", "--json"], "--json only goes with --dry-run"),
        (["synthetic", "--dry-run", "--speed", "max", "--max-gap", "2s"], "--max-gap"),
        (["synthetic", "--dry-run", "--inject", "genre-swap"], "own shifts"),
        (["ml-1m", "--dry-run", "--inject-at", "0.3"], "--inject-at needs --inject"),
        (["ml-1m", "--dry-run", "--cohort-frac", "0.3"], "--cohort-frac needs --inject"),
        (["ml-1m", "--dry-run", "--start", "2001-01-01", "--end", "2000-01-01"], "not before"),
        (["ml-1m", "--dry-run", "--start", "soon"], "not a date"),
        (["synthetic", "--dry-run", "--max-gap", "forever", "--speed", "10x"], "not a duration"),
        (["synthetic", "--dry-run", "--users", "50", "--events", "10"], "at least users"),
        (["ml-1m", "--dry-run", "--inject", "teleport"], "--inject"),
    ],
)
def test_conflicting_or_bad_options_are_usage_errors(args: list[str], needle: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert needle in flat(result.stderr)


def test_dry_run_json_on_the_real_subset(ml1m_subset_dir: Path) -> None:
    result = runner.invoke(
        app,
        ["ml-1m", "--data-dir", str(ml1m_subset_dir), "--dry-run", "--json", "--speed", "100000x"],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["events"] == 487_650
    assert summary["users"] == 2_999
    assert summary["items"] == 3_615
    assert summary["first_event_time"] == {"epoch": 970620734.0, "iso": "2000-10-04T00:52:14Z"}
    assert summary["last_event_time"]["iso"] == "2003-02-27T23:31:15Z"
    assert summary["planned_replay_s"] == pytest.approx((1046388675 - 970620734) / 100_000)
    assert summary["malformed"] == 0 and summary["speed"] == "100000x"
    capped = runner.invoke(
        app,
        [
            "ml-1m",
            "--data-dir",
            str(ml1m_subset_dir),
            "--dry-run",
            "--json",
            "--speed",
            "1x",
            "--max-gap",
            "1ms",
            "--limit",
            "1000",
        ],
    )
    assert capped.exit_code == 0, capped.output
    planned = json.loads(capped.stdout)["planned_replay_s"]
    assert 0 < planned <= 999 * 0.001 + 1e-9  # every wait capped at 1 ms


def test_dry_run_selection_and_resume_point(tiny_ml1m_dir: Path) -> None:
    result = runner.invoke(
        app,
        [
            "ml-1m",
            "--data-dir",
            str(tiny_ml1m_dir),
            "--dry-run",
            "--json",
            "--speed",
            "10x",
            "--start",
            "1970-01-01T00:16:40",
            "--limit",
            "5",
            "--from-event",
            "2",
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    # events at t >= 1000: 1000, 1000, 1000, 1005, 1010 (limit 5); resume at id 2 -> t 1000..1010
    assert summary["events"] == 5 and summary["events_to_send"] == 3
    assert summary["planned_replay_s"] == pytest.approx(1.0)
    past = runner.invoke(
        app, ["ml-1m", "--data-dir", str(tiny_ml1m_dir), "--dry-run", "--from-event", "99"]
    )
    assert past.exit_code == 2 and "past the end" in past.stderr


def test_synthetic_dry_run_writes_ground_truth_when_asked(tmp_path: Path) -> None:
    truth = tmp_path / "gt.parquet"
    args = [
        "synthetic",
        "--users",
        "50",
        "--items",
        "80",
        "--events",
        "2000",
        "--seed",
        "3",
        "--dry-run",
        "--json",
        "--ground-truth",
        str(truth),
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["events"] == 2000 and summary["users"] == 50 and summary["cohort_users"] == 10
    import polars as pl

    frame = pl.read_parquet(truth)
    assert frame.height == 10 and set(frame.columns) >= {
        "user",
        "shift_time",
        "kind",
        "old_topics",
        "new_topics",
    }


def test_malformed_lines_are_reported_and_strict_fails(malformed_ml1m_dir: Path) -> None:
    args = ["ml-1m", "--data-dir", str(malformed_ml1m_dir), "--dry-run", "--json"]
    lenient = runner.invoke(app, args)
    assert lenient.exit_code == 0
    assert json.loads(lenient.stdout)["malformed"] == 3
    assert "3 malformed line(s)" in lenient.stderr
    assert "line 3: '1::oops::3::1000'" in lenient.stderr and "line 6: 'garbage'" in lenient.stderr
    strict = runner.invoke(app, [*args, "--strict"])
    assert strict.exit_code == 1
    assert "--strict" in strict.stderr and "line 3" in strict.stderr


def test_unreachable_broker_fails_after_a_bounded_retry(
    tiny_ml1m_dir: Path, tmp_path: Path
) -> None:
    address = f"127.0.0.1:{free_port()}"
    result = runner.invoke(
        app,
        [
            "ml-1m",
            "--data-dir",
            str(tiny_ml1m_dir),
            "--bootstrap",
            address,
            "--connect-timeout",
            "0.5",
            "--describe",
            str(tmp_path / "s.json"),
        ],
    )
    assert result.exit_code == 1
    assert f"no Kafka broker answered at {address}" in result.stderr


def test_durations() -> None:
    assert parse_duration("2") == 2.0
    assert parse_duration("500ms") == 0.5
    assert parse_duration("1.5m") == 90.0
    assert parse_duration("1h") == 3600.0
    with pytest.raises(ValueError):
        parse_duration("soon")
