"""``faust -A stream.app worker``: the evaluation worker built from ``Settings.load()``.

Settings come from ``$SHIFTSTREAM_CONFIG`` (TOML/YAML) and ``SHIFTSTREAM_*`` variables; see
``stream.settings``. Run each worker with ``--without-web`` (or its own ``--web-port``) and its
own ``--datadir``.
"""

from __future__ import annotations

from stream.faustapp import create_app
from stream.settings import Settings

settings = Settings.load()
app = create_app(settings)
