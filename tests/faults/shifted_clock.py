"""`prefcenter` with a wall clock a test can move: run this file as the command, with
PREFCENTER_TEST_CLOCK_FILE naming a file that holds the offset in seconds (rewritten to jump).

Every `prefcenter` module that took `utcnow` from `prefcenter.db` gets the shifted one: the
service's idea of now, as a host whose clock was stepped back would have it. Only the
service's: a PostgreSQL server keeps its own clock.
"""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import prefcenter.app  # every module that reads the clock, loaded before it is replaced
import prefcenter.cli
import prefcenter.db

CLOCK_FILE = "PREFCENTER_TEST_CLOCK_FILE"


def shifted_utcnow() -> datetime:
    offset = Path(os.environ[CLOCK_FILE]).read_text(encoding="ascii").strip()
    return datetime.now(UTC) + timedelta(seconds=float(offset or 0))


def main() -> None:
    original = prefcenter.db.utcnow
    for name, module in list(sys.modules.items()):
        if name.startswith("prefcenter") and getattr(module, "utcnow", None) is original:
            module.utcnow = shifted_utcnow  # type: ignore[attr-defined]
    prefcenter.cli.main()


if __name__ == "__main__":
    main()
