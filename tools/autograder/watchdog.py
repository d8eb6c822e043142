"""Clean up after a grading parent that died: ``python -m tools.autograder.watchdog SCRATCH``.

The parent starts this in its own session with a pipe on stdin and never writes
to it.  When the pipe closes (the parent finished, or was killed, even by SIGKILL)
the watchdog kills the run's worker process groups and kernels by the pids they
recorded in SCRATCH, then deletes SCRATCH (the release, the gradebook snapshot
with the hidden tests, every job folder).  A parent that keeps its scratch
(``--keep-scratch``) writes ``keep`` first.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
from pathlib import Path

from tools.autograder.lanes import kill_kernels


def main() -> None:
    scratch = Path(sys.argv[1])
    keep = sys.stdin.read().strip() == "keep"
    pids = scratch / "lanes.pids"
    if pids.exists():
        for line in pids.read_text().split():
            try:
                if b"tools.autograder.worker" in Path(f"/proc/{int(line)}/cmdline").read_bytes():
                    os.killpg(int(line), signal.SIGKILL)
            except (ValueError, OSError):
                pass
    for job in (scratch / "jobs").glob("*") if (scratch / "jobs").is_dir() else []:
        kill_kernels(job)
    if not keep:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
