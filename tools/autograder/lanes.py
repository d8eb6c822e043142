"""Worker lanes: one grading worker process per parallel lane, reused from submission to submission.

A submission that runs past ``submission_timeout`` gets its worker's whole
process group and its kernels (by the pids their launcher recorded) killed; the
next submission starts a new worker.  Each lane's pid is recorded in the run's
scratch folder, so the watchdog (``core``) can kill it if the parent dies.
"""

from __future__ import annotations

import contextlib
import os
import resource
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

from tools.autograder.config import Limits
from tools.autograder.records import JobSpec, Result
from tools.common import REPO, tool_env

KERNEL_MARK = b"sandbox_kernel.py"


def worker_env(job_dir: Path, jupyter: Path, quick: bool, sandbox_spec: Path | None = None) -> dict[str, str]:
    """The environment of a worker for one job (the kernel inherits it when it is not sandboxed)."""
    keep = ("LANG", "LC_ALL", "LC_CTYPE", "TZ")
    env = {k: v for k, v in os.environ.items() if k in keep or k.startswith("COURSE_")}
    for d in ("home", "tmp", "ipython", "mpl", "jupyter_config", "jupyter_data", "runtime"):
        (job_dir / d).mkdir(exist_ok=True)
    env.update(
        PATH=tool_env({"PATH": os.environ.get("PATH", os.defpath)})["PATH"],
        HOME=str(job_dir / "home"), TMPDIR=str(job_dir / "tmp"), IPYTHONDIR=str(job_dir / "ipython"),
        MPLCONFIGDIR=str(job_dir / "mpl"), MPLBACKEND="Agg",
        JUPYTER_PATH=str(jupyter), JUPYTER_CONFIG_DIR=str(job_dir / "jupyter_config"),
        JUPYTER_DATA_DIR=str(job_dir / "jupyter_data"), JUPYTER_RUNTIME_DIR=str(job_dir / "runtime"),
        JUPYTER_PLATFORM_DIRS="1", PYTHONPATH=str(REPO), PYTHONDONTWRITEBYTECODE="1",
        OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", COURSE_GRADER_PIDFILE=str(job_dir / "kernel.pids"),
    )
    env.pop("COURSE_SANDBOX_SPEC", None)
    if sandbox_spec is not None:
        env["COURSE_SANDBOX_SPEC"] = str(sandbox_spec)
    env["COURSE_QUICK"] = "1" if quick else "0"
    return env


def kill_kernels(job_dir: Path) -> None:
    """Kill the kernels (or their sandboxes) this job started: pids from its pid file, checked by command line."""
    pidfile = job_dir / "kernel.pids"
    if pidfile.exists():
        for line in pidfile.read_text().split():
            try:
                pid = int(line)
                if KERNEL_MARK in Path(f"/proc/{pid}/cmdline").read_bytes():
                    os.kill(pid, signal.SIGKILL)
            except (ValueError, OSError):
                pass


class Lane:
    def __init__(self, index: int, scratch: Path, jupyter: Path, quick: bool, limits: Limits):
        self.index = index
        self.dir = scratch / f"lane{index}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.pids = scratch / "lanes.pids"
        self.env = worker_env(self.dir, jupyter, quick)
        self.jupyter, self.quick = jupyter, quick
        self.limits = limits
        self.proc: subprocess.Popen | None = None
        self.log = self.dir / "worker.log"

    def _start(self) -> subprocess.Popen:
        log = open(self.log, "ab")
        try:
            proc = subprocess.Popen([sys.executable, "-m", "tools.autograder.worker", "--serve"], cwd=self.dir,
                                    env=self.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                                    start_new_session=True)
        finally:
            log.close()
        with open(self.pids, "a") as f:
            f.write(f"{proc.pid}\n")
        with contextlib.suppress(OSError, ValueError):  # the trusted side has a memory bound too
            resource.prlimit(proc.pid, resource.RLIMIT_DATA, (self.limits.worker_memory, self.limits.worker_memory))
        return proc

    def _kill(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            self.proc = None

    def close(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._kill()
            self.proc = None

    def _wait_line(self, deadline: float) -> bool:
        fd = self.proc.stdout.fileno()
        buf = b""
        while not buf.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            ready, _, _ = select.select([fd], [], [], min(left, 1.0))
            if ready:
                chunk = os.read(fd, 64)
                if not chunk:  # the worker died
                    return True
                buf += chunk
        return True

    def _send(self, line: bytes) -> None:
        if self.proc is None or self.proc.poll() is not None:
            self.proc = self._start()
        try:
            self.proc.stdin.write(line)
            self.proc.stdin.flush()
        except OSError:
            self._kill()
            self.proc = self._start()
            self.proc.stdin.write(line)
            self.proc.stdin.flush()

    def run(self, job_dir: Path, spec: JobSpec, sandbox_spec: Path | None) -> Result:
        spec.env = worker_env(job_dir, self.jupyter, self.quick, sandbox_spec)
        job_json = job_dir / "job.json"
        spec.write(job_json)
        self._send(f"{job_json}\n".encode())
        finished = self._wait_line(time.monotonic() + self.limits.submission_timeout)
        if not finished:
            self._kill()
            kill_kernels(job_dir)
            return Result.failed("killed", f"the submission ran past the {self.limits.submission_timeout} s limit "
                                 "and was killed")
        kill_kernels(job_dir)
        result_file = job_dir / "result.json"
        if not result_file.exists():
            code = self.proc.poll()
            self._kill()
            tail = self.log.read_text(errors="replace")[-300:].strip().replace("\n", " | ")
            return Result.failed("grader_error", f"the grading worker died (exit code {code}): {tail}")
        return Result.read(result_file)
