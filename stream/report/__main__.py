"""``python -m stream.report RUN_DIR [options]``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from stream.report.build import ReportOptions, build_report
from stream.report.files import ReportError
from stream.report.tables import RecoverySettings

DAY_S = 86_400.0
app = typer.Typer(add_completion=False)

RunDir = Annotated[Path, typer.Argument(help="A run folder written by the sink.")]
McNemarWindow = Annotated[int, typer.Option(min=1, help="Paired events per McNemar window.")]
Metric = Annotated[str, typer.Option(help="Recovery metric: hr@1/5/10/20, ndcg@10/20 or mrr.")]
Epsilon = Annotated[
    float, typer.Option(min=0.0, help="Recovered: within this share of the pre-level.")
]
Absolute = Annotated[
    bool, typer.Option("--absolute-epsilon", help="Epsilon in metric units, not a share.")
]
MinEvents = Annotated[int, typer.Option(min=1, help="Fewest events a window needs to count.")]
Hold = Annotated[int, typer.Option(min=1, help="Windows in a row back within epsilon.")]
Quantile = Annotated[
    float, typer.Option(min=0.5, max=1.0, help="Event-time axes end at this quantile of time.")
]
FlagK = Annotated[float, typer.Option(min=0.0, help="z that flags a window's shift score.")]


@app.command()
def main(
    run_dir: RunDir,
    mcnemar_window: McNemarWindow = 1000,
    metric: Metric = "hr@10",
    recovery_window_days: Annotated[
        float, typer.Option(min=1e-6, help="Recovery window (days).")
    ] = 1.0,
    pre_days: Annotated[float, typer.Option(min=1e-6, help="Pre-shift level span (days).")] = 7.0,
    horizon_days: Annotated[float, typer.Option(min=1e-6, help="Recovery horizon (days).")] = 28.0,
    epsilon: Epsilon = 0.1,
    absolute_epsilon: Absolute = False,
    hold: Hold = 3,
    min_events: MinEvents = 20,
    flag_k: FlagK = 3.0,
    time_quantile: Quantile = 0.95,
) -> None:
    """Write RUN_DIR/report/: figures, summary.md, report.html and CSV tables."""
    recovery = RecoverySettings(
        metric=metric,
        window_s=recovery_window_days * DAY_S,
        pre_span_s=pre_days * DAY_S,
        horizon_s=horizon_days * DAY_S,
        epsilon=epsilon,
        relative=not absolute_epsilon,
        min_events=min_events,
        hold=hold,
    )
    options = ReportOptions(mcnemar_window, flag_k, min_events, time_quantile, recovery)
    try:
        written = build_report(run_dir, options)
    except ReportError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from error
    typer.echo(f"wrote {len(written)} files to {run_dir / 'report'}")


if __name__ == "__main__":
    app()
