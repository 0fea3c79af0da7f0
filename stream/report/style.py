"""One colour per model family across every plot; a frozen twin shares its hue, dashed."""

from __future__ import annotations

from typing import Any

from stream.report.tables import FROZEN_SUFFIX

FAMILY_COLOURS = {
    "pop": "#7f7f7f",
    "sasrec": "#1f77b4",
    "ttt4rec": "#ff7f0e",
    "t2arec": "#2ca02c",
    "darec": "#9467bd",
}
SPARE_COLOURS = ["#d62728", "#8c564b", "#e377c2", "#bcbd22", "#17becf", "#393b79"]
SHIFT_COLOUR = "#c0392b"


def family(model: str) -> str:
    return model.removesuffix(FROZEN_SUFFIX)


def model_styles(models: list[str]) -> dict[str, dict[str, Any]]:
    """matplotlib line keywords per model; unknown families take spare colours in name order."""
    unknown = sorted({family(m) for m in models} - FAMILY_COLOURS.keys())
    colours = dict(FAMILY_COLOURS)
    for position, name in enumerate(unknown):
        colours[name] = SPARE_COLOURS[position % len(SPARE_COLOURS)]
    return {
        m: {
            "color": colours[family(m)],
            "linestyle": "--" if m.endswith(FROZEN_SUFFIX) else "-",
            "label": m,
        }
        for m in models
    }
