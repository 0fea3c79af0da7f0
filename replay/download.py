"""ML-1M on first use: download from GroupLens, verify the checksum, unpack into the user cache.

Cache folder: ``$SHIFTSTREAM_CACHE`` if set, else ``platformdirs.user_cache_dir("shiftstream")``.
Layout: ``<cache>/ml-1m/{ratings,movies,users}.dat`` plus ``<cache>/ml-1m.zip.sha256`` (the
SHA-256 of the verified archive, recorded for provenance). The download goes to a temporary file
that is renamed into place only after its MD5 matches, and the archive is unpacked into a
temporary folder that is renamed into place, so an interrupted run never leaves a half cache.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, cast

import platformdirs

ML1M_URL = "https://files.grouplens.org/datasets/movielens/ml-1m.zip"
ML1M_MD5 = "c4d9eecfca2ab87c1945afe126590906"  # as commonly published for ml-1m.zip
CACHE_ENV = "SHIFTSTREAM_CACHE"
URL_ENV = "SHIFTSTREAM_ML1M_URL"  # override the download address (mirrors, tests)
ML1M_FILES = ("ratings.dat", "movies.dat", "users.dat", "README")
DOWNLOAD_TIMEOUT_S = 60.0

Fetch = Callable[[str, BinaryIO], None]


class DatasetUnavailable(RuntimeError):
    """The dataset is neither cached nor downloadable; the message says what to do instead."""


def cache_dir() -> Path:
    override = os.environ.get(CACHE_ENV)
    return Path(override) if override else Path(platformdirs.user_cache_dir("shiftstream"))


def urllib_fetch(url: str, destination: BinaryIO) -> None:
    with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
        shutil.copyfileobj(response, destination, length=1 << 20)


def _digest(path: Path, algorithm: str) -> str:
    hasher = hashlib.new(algorithm)
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            hasher.update(block)
    return hasher.hexdigest()


def _unavailable(reason: str) -> DatasetUnavailable:
    return DatasetUnavailable(
        f"ML-1M is not cached and could not be downloaded ({reason}). Either pass --data-dir DIR "
        "pointing at a folder that holds ratings.dat (and movies.dat), set "
        f"{CACHE_ENV} to a cache that has ml-1m/, or use the `synthetic` dataset "
        "(python -m replay synthetic), which needs no download."
    )


def ensure_ml1m(
    cache: Path | None = None,
    url: str | None = None,
    fetch: Fetch = urllib_fetch,
    expected_md5: str = ML1M_MD5,
) -> Path:
    """Folder holding ML-1M's ``ratings.dat``: the cache when present, else download and unpack."""
    root = cache or cache_dir()
    target = root / "ml-1m"
    if (target / "ratings.dat").is_file():
        return target
    url = url or os.environ.get(URL_ENV) or ML1M_URL
    root.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(
        dir=root, prefix="ml-1m.", suffix=".zip.part", delete=False
    )
    partial = Path(handle.name)
    try:
        with handle:
            try:
                fetch(url, cast(BinaryIO, handle))
            except (urllib.error.URLError, OSError, ValueError) as error:
                raise _unavailable(f"{url}: {error}") from error
        md5 = _digest(partial, "md5")
        if md5 != expected_md5:
            raise DatasetUnavailable(
                f"checksum mismatch for {url}: MD5 {md5}, expected {expected_md5}; the download "
                "is corrupt or the file changed upstream. Nothing was cached."
            )
        archive = root / "ml-1m.zip"
        os.replace(partial, archive)
        (root / "ml-1m.zip.sha256").write_text(f"{_digest(archive, 'sha256')}  ml-1m.zip\n")
        _unpack(archive, target)
    finally:
        partial.unlink(missing_ok=True)
    return target


def _unpack(archive: Path, target: Path) -> None:
    """Extract the ML-1M members into ``target`` atomically (temp folder + rename)."""
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix="ml-1m.unpack."))
    try:
        with zipfile.ZipFile(archive) as bundle:
            members = {
                Path(name).name: name for name in bundle.namelist() if not name.endswith("/")
            }
            if "ratings.dat" not in members:
                raise DatasetUnavailable(f"{archive} holds no ratings.dat; it is not ML-1M")
            for wanted in ML1M_FILES:
                if wanted in members:
                    with (
                        bundle.open(members[wanted]) as source,
                        (staging / wanted).open("wb") as out,
                    ):
                        shutil.copyfileobj(source, out, length=1 << 20)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
