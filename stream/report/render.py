"""``summary.md`` and ``report.html`` from one list of sections (text, string tables, images)."""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl


@dataclass
class Section:
    title: str
    paragraphs: list[str] = field(default_factory=list)
    table: pl.DataFrame | None = None  # every column already formatted as strings
    images: list[Path] = field(default_factory=list)  # relative to the report folder


def fmt(value: object, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return "n/a" if value != value else f"{value:.{digits}f}"
    return str(value)


def with_ci(mean: float | None, half_width: float | None, digits: int = 4) -> str:
    if half_width is None or half_width != half_width:
        return fmt(mean, digits)
    return f"{fmt(mean, digits)} ± {fmt(half_width, digits)}"


def markdown(title: str, sections: list[Section]) -> str:
    lines = [f"# {title}", ""]
    for section in sections:
        lines += [f"## {section.title}", ""]
        for paragraph in section.paragraphs:
            lines += [paragraph, ""]
        if section.table is not None and section.table.height:
            lines.append("| " + " | ".join(section.table.columns) + " |")
            lines.append("|" + "---|" * section.table.width)
            lines += ["| " + " | ".join(row) + " |" for row in section.table.iter_rows()]
            lines.append("")
        lines += [f"![{image.stem}]({image.as_posix()})" for image in section.images]
        if section.images:
            lines.append("")
    return "\n".join(lines)


STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; border: 1px solid #eee; margin: 0.5em 0; }
"""


def html_page(title: str, sections: list[Section]) -> str:
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    for section in sections:
        parts.append(f"<h2>{html.escape(section.title)}</h2>")
        parts += [f"<p>{html.escape(p)}</p>" for p in section.paragraphs]
        if section.table is not None and section.table.height:
            head = "".join(f"<th>{html.escape(c)}</th>" for c in section.table.columns)
            body = "".join(
                "<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in row) + "</tr>"
                for row in section.table.iter_rows()
            )
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        parts += [
            f'<p><img src="{html.escape(i.as_posix())}" alt="{html.escape(i.stem)}"></p>'
            for i in section.images
        ]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
