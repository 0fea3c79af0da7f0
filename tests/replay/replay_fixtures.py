"""Tiny ML-1M-format logs for the replayer tests (written to tmp dirs, never committed)."""

from __future__ import annotations

from pathlib import Path

# (user, item, rating, timestamp): ties on time across users and within a user on purpose
TINY_RATINGS = [
    (2, 10, 5, 1000),
    (1, 11, 4, 1000),  # same second as the row above, smaller user: goes first
    (1, 12, 3, 1000),  # same second and user: original row order decides
    (3, 13, 2, 999),
    (2, 14, 1, 1005),
    (1, 10, 5, 1010),
    (3, 11, 4, 1010),
    (2, 12, 3, 1020),
]

TINY_MOVIES = [
    (10, "Amélie (2001)", "Comedy|Romance"),
    (11, "Alien (1979)", "Horror|Sci-Fi"),
    (12, "Heat (1995)", "Action|Crime|Thriller"),
    (13, "Toy Story (1995)", "Animation|Children's|Comedy"),
    (14, "Fargo (1996)", "Crime|Drama|Thriller"),
]


def write_ml1m(folder: Path, lines: list[str], movies: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ratings.dat").write_text("\n".join(lines) + "\n")
    if movies:
        text = "\n".join(f"{i}::{title}::{genres}" for i, title, genres in TINY_MOVIES) + "\n"
        (folder / "movies.dat").write_bytes(text.encode("latin-1"))
    return folder
