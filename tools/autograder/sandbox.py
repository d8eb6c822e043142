"""The sandbox of each submission's kernel: bubblewrap, or (explicitly accepted) resource limits only.

``detect()`` finds ``bwrap`` (Debian's ``bubblewrap``) and checks that it can make
namespaces here.  ``write_kernelspec`` writes the run's kernelspec into the grader's
scratch folder (never visible to a kernel); ``plan`` writes, per submission, the JSON
plan that ``sandbox_kernel.py --sandbox`` turns into a bwrap command line: what the
kernel may read (the Python environment, the course's ``lib/`` and datasets), its
private tmpfs folders, its socket folder, its uid, its limits and its environment.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tools.autograder.config import Limits
from tools.common import REPO

KERNEL_NAME = "attention-course-sandbox"
LAUNCHER = Path(__file__).with_name("sandbox_kernel.py")
BASE_UID = 61000  # lane i runs its kernels as uid BASE_UID + i (root mode)


@dataclass
class Isolation:
    sandboxed: bool
    mode: str  # "root" (bwrap as root, kernel dropped to an unused uid), "user" (user namespace) or "none"
    bwrap: str = ""
    setpriv: str = ""
    why: str = ""  # why there is no sandbox

    def describe(self) -> str:
        if self.sandboxed:
            who = "an unprivileged uid" if self.mode == "root" else "a user namespace without capabilities"
            return f"bubblewrap sandbox per submission ({who}, no network, private PID/IPC namespaces)"
        return f"WEAK ISOLATION: resource limits only, student code runs as you ({self.why})"


def detect() -> Isolation:
    bwrap = shutil.which("bwrap")
    if not bwrap:
        return Isolation(False, "none", why="bwrap not found: apt-get install bubblewrap")
    root = os.geteuid() == 0
    setpriv = shutil.which("setpriv") or ""
    if root and not setpriv:
        return Isolation(False, "none", why="setpriv (util-linux) not found")
    probe = [bwrap, "--unshare-pid", "--unshare-net", "--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev"]
    if not root:
        probe += ["--unshare-user"]
    try:
        r = subprocess.run([*probe, "--", "/bin/true"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return Isolation(False, "none", why=f"bwrap cannot run: {e}")
    if r.returncode != 0:
        return Isolation(False, "none", why=f"bwrap cannot make namespaces here: {r.stderr.strip()[:200]}")
    return Isolation(True, "root" if root else "user", bwrap, setpriv)


def write_kernelspec(scratch: Path, limits: Limits, iso: Isolation) -> Path:
    """The run's kernelspec in ``scratch/jupyter`` (JUPYTER_PATH of the workers)."""
    jupyter = scratch / "jupyter"
    spec = jupyter / "kernels" / KERNEL_NAME
    spec.mkdir(parents=True)
    cpu = max(limits.submission_timeout, limits.cell_timeout) + 30
    if iso.sandboxed:
        argv = [sys.executable, str(LAUNCHER), "--sandbox", "--", "-f", "{connection_file}"]
    else:
        argv = [sys.executable, str(LAUNCHER), "--memory", str(limits.memory), "--cpu", str(cpu),
                "--fsize", str(limits.file_size), "--", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps(
        {"argv": argv, "display_name": "Python 3 (course grader sandbox)", "language": "python",
         "interrupt_mode": "message" if iso.sandboxed else "signal"}))
    return jupyter


def _python() -> str:
    """This environment's interpreter by a path the sandbox has (its folders' symlinks resolved)."""
    return os.path.join(os.path.realpath(sys.prefix), "bin", os.path.basename(sys.executable))


def data_mirrors() -> list[str]:
    """The dataset folders a kernel reads in place: the course's cache and ``$COURSE_DATA_MIRROR``."""
    out = []
    for part in [str(REPO / "data"), *os.environ.get("COURSE_DATA_MIRROR", "").split(os.pathsep)]:
        part = part.strip()
        if part:
            path = Path(part) if Path(part).is_absolute() else REPO / part
            if path.is_dir() and os.path.realpath(path) not in out:
                out.append(os.path.realpath(path))
    return out


def readable_paths() -> list[str]:
    """What a sandboxed kernel may read: the Python environment, the course library, datasets."""
    paths = {os.path.realpath(sys.prefix), os.path.realpath(sys.base_prefix), os.path.realpath(sys.exec_prefix)}
    paths.add(str(REPO / "lib"))
    if (REPO / "requirements-lock.txt").is_file():  # lesson 00 compares the versions with it
        paths.add(str(REPO / "requirements-lock.txt"))
    paths.update(data_mirrors())
    paths.add(str(LAUNCHER))
    # drop what /usr and /etc already hold, and paths inside others
    out = sorted(p for p in paths if not p.startswith(("/usr/", "/etc/")) and p not in ("/usr", "/etc"))
    return [p for p in out if not any(p != q and p.startswith(q + "/") for q in out)]


def plan(job_dir: Path, lane: int, limits: Limits, iso: Isolation, quick: bool,
         lib: Path | None = None) -> tuple[Path, Path]:
    """Write the sandbox plan of one job; return (plan file, socket folder).

    ``lib``: the course library the kernel sees in place of ``lib/`` (``withhold.build``: without the
    references of the lesson being graded)."""
    ipc = job_dir / "ipc"
    ipc.mkdir(parents=True, exist_ok=True)
    uid = BASE_UID + lane if iso.mode == "root" else os.getuid()
    if iso.mode == "root":  # root's folder: the kernel creates its sockets through the group, until it is ready
        os.chown(ipc, 0, uid)
        os.chmod(ipc, 0o770)
    else:
        os.chmod(ipc, 0o700)
    home, tmp = "/home/student", "/tmp"
    env = {k: v for k, v in os.environ.items() if k in ("LANG", "LC_ALL", "LC_CTYPE", "TZ")}
    env.update({k: v for k, v in os.environ.items() if k.startswith("COURSE_") and k != "COURSE_SANDBOX_SPEC"})
    env.update(
        PATH=os.pathsep.join([str(Path(_python()).parent), "/usr/local/bin", "/usr/bin", "/bin"]),
        HOME=home, TMPDIR=tmp, IPYTHONDIR=f"{home}/.ipython", MPLCONFIGDIR=f"{home}/.mpl", MPLBACKEND="Agg",
        JUPYTER_CONFIG_DIR=f"{home}/.jupyter", JUPYTER_DATA_DIR=f"{home}/.local/share/jupyter",
        JUPYTER_RUNTIME_DIR=f"{home}/.runtime", JUPYTER_PLATFORM_DIRS="1", PYTHONPATH=str(REPO),
        PYTHONDONTWRITEBYTECODE="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", COURSE_QUICK="1" if quick else "0",
        # datasets: read in place from the (read-only) cache and mirrors; verification stamps in the tmpfs home
        COURSE_DATA_MIRROR=os.pathsep.join(data_mirrors()), COURSE_DATA_DIR=f"{home}/data", COURSE_DATA_OFFLINE="1",
    )
    spec = {
        "mode": iso.mode, "bwrap": iso.bwrap, "setpriv": iso.setpriv, "uid": uid, "ro": readable_paths(),
        "ro_from": {str(REPO / "lib"): str(lib)} if lib is not None else {},
        "tmpfs": [home, tmp], "ipc_dir": str(ipc), "env": env, "python": _python(),
        "kernel_script": str(LAUNCHER), "memory": limits.memory,
        "cpu": max(limits.submission_timeout, limits.cell_timeout) + 30, "fsize": limits.file_size,
        "nproc": limits.processes, "scratch_size": limits.scratch_size,
    }
    path = job_dir / "sandbox.json"
    path.write_text(json.dumps(spec))
    return path, ipc
