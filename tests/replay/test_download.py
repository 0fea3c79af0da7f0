"""ML-1M download: a local zip stands in for GroupLens (no network here); checksum, cache."""

from __future__ import annotations

import hashlib
import urllib.error
import zipfile
from pathlib import Path
from typing import BinaryIO

import pytest
from replay_fixtures import TINY_RATINGS, write_ml1m
from typer.testing import CliRunner

from replay.cli import app
from replay.download import CACHE_ENV, URL_ENV, DatasetUnavailable, ensure_ml1m
from replay.run import ML1M, load


def build_zip(tmp_path: Path) -> tuple[Path, str]:
    source = write_ml1m(tmp_path / "src", [f"{u}::{i}::{r}::{t}" for u, i, r, t in TINY_RATINGS])
    archive = tmp_path / "ml-1m.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("ml-1m/", "")
        for name in ("ratings.dat", "movies.dat"):
            bundle.write(source / name, f"ml-1m/{name}")
    return archive, hashlib.md5(archive.read_bytes()).hexdigest()


def test_download_from_a_file_url_verifies_caches_and_reuses(tmp_path: Path) -> None:
    archive, md5 = build_zip(tmp_path)
    cache = tmp_path / "cache"
    folder = ensure_ml1m(cache=cache, url=archive.as_uri(), expected_md5=md5)
    assert folder == cache / "ml-1m"
    assert (folder / "ratings.dat").read_bytes() == (tmp_path / "src" / "ratings.dat").read_bytes()
    recorded = (cache / "ml-1m.zip.sha256").read_text().split()[0]
    assert recorded == hashlib.sha256(archive.read_bytes()).hexdigest()
    assert not list(cache.glob("*.part")) and not list(cache.glob("ml-1m.unpack.*"))

    def no_fetch(url: str, destination: BinaryIO) -> None:
        raise AssertionError("the cache should have been used")

    assert ensure_ml1m(cache=cache, fetch=no_fetch, expected_md5=md5) == folder
    log = load(ML1M(cache=cache), fetch=no_fetch)
    assert log.events.height == len(TINY_RATINGS)
    assert log.items is not None and log.items.height == 5


def test_checksum_mismatch_caches_nothing(tmp_path: Path) -> None:
    archive, _ = build_zip(tmp_path)
    cache = tmp_path / "cache"
    with pytest.raises(DatasetUnavailable, match="checksum mismatch.*expected 0{32}"):
        ensure_ml1m(cache=cache, url=archive.as_uri(), expected_md5="0" * 32)
    assert not (cache / "ml-1m").exists() and not (cache / "ml-1m.zip").exists()
    assert not list(cache.glob("*.part"))


def test_injected_fetch_is_used(tmp_path: Path) -> None:
    archive, md5 = build_zip(tmp_path)
    asked: list[str] = []

    def serve(url: str, destination: BinaryIO) -> None:
        asked.append(url)
        destination.write(archive.read_bytes())

    folder = ensure_ml1m(
        cache=tmp_path / "c", url="https://mirror.example/ml-1m.zip", fetch=serve, expected_md5=md5
    )
    assert asked == ["https://mirror.example/ml-1m.zip"]
    assert (folder / "movies.dat").is_file()


def test_no_network_and_no_cache_names_the_alternatives(tmp_path: Path) -> None:
    def offline(url: str, destination: BinaryIO) -> None:
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    with pytest.raises(DatasetUnavailable) as raised:
        ensure_ml1m(cache=tmp_path / "empty", fetch=offline)
    message = str(raised.value)
    assert "--data-dir" in message and "synthetic" in message
    assert not list((tmp_path / "empty").iterdir())


def test_cli_without_network_exits_1_with_the_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(URL_ENV, (tmp_path / "nowhere" / "ml-1m.zip").as_uri())
    result = CliRunner().invoke(app, ["ml-1m", "--dry-run"])
    assert result.exit_code == 1
    assert "--data-dir" in result.stderr and "synthetic" in result.stderr
