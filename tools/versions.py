"""Known-good versions: write the lock file, or report where this environment drifts from it.

    python tools/versions.py lock    # (make lock) record this environment's exact versions
    python tools/versions.py drift   # (make versions) one line per package that differs

``requirements-lock.txt`` is a pip *constraints* file: the exact versions the stored
outputs of ``solutions/`` were made with. Run ``make lock`` right after re-executing the
lessons. ``make env`` never uses it (a machine whose package index lacks a pinned release
must still install); ``make env-locked`` installs exactly these versions, for a class that
wants every student on the same ones. ``make test`` prints the drift at the top of its output.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: make `lib` importable

from lib.runtime import LOCK_FILE, version_drift  # noqa: E402

HEADER = """\
# The exact versions the stored outputs of solutions/ were made with (Python {python}).
# Written by `make lock` (tools/versions.py); a pip constraints file: `make env-locked` installs
# exactly these, `make env` does not use it, and `make test` reports where an environment differs.
"""


def lock(path: Path = LOCK_FILE) -> int:
    frozen = subprocess.run(
        [sys.executable, "-m", "pip", "freeze", "--exclude-editable"], check=True, capture_output=True, text=True
    ).stdout.splitlines()
    pins = sorted((line for line in frozen if "==" in line and not line.startswith("#")), key=str.lower)
    python = ".".join(map(str, sys.version_info[:3]))
    path.write_text(HEADER.format(python=python) + "\n".join(pins) + "\n", encoding="utf-8")
    return len(pins)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["lock", "drift"])
    args = parser.parse_args(argv)
    if args.command == "lock":
        print(f"recorded {lock()} packages in {LOCK_FILE.name}")
        return
    drift = version_drift()
    print("\n".join(drift) if drift else f"installed versions match {LOCK_FILE.name}")


if __name__ == "__main__":
    main()
