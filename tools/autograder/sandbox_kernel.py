"""Launch an IPython kernel under resource limits, in a bubblewrap sandbox when asked.

The grader's kernelspec runs this file as a plain script (not ``-m``), so nothing
from the course is imported before the limits are in place.  Two modes:

``python sandbox_kernel.py --sandbox -- -f CONNECTION_FILE`` (the default of ``make grade``):
    the *launcher*, trusted code run by the grading worker.  It reads the sandbox plan
    (``$COURSE_SANDBOX_SPEC``, a JSON file written by the grading parent, see
    ``sandbox.py``), copies the connection file into the job's socket folder, sets the
    resource limits and replaces itself with ``bwrap``, which runs this same file
    again inside fresh PID, network, IPC and UTS namespaces as an unprivileged uid
    (``setpriv``: no capabilities, no new privileges), with the course library and the
    Python environment read-only, private tmpfs folders for the working directory,
    home and temp, and nothing else of the machine's files.  The kernel talks to the
    worker over Unix sockets in the one folder both see.  ``--die-with-parent``: when
    the launcher's process (bwrap) is killed, every process of the sandbox dies.

``python sandbox_kernel.py --memory BYTES --cpu S --fsize BYTES -- -f CONNECTION_FILE``:
    the kernel itself (inside the sandbox, or directly under ``--weak-isolation``):

* ``RLIMIT_DATA`` = ``--memory``: heap and private writable mappings, which is
  what tensors and Python objects take; an allocation beyond it fails with
  ``MemoryError`` / torch's "can't allocate memory" instead of taking the host down.
* ``RLIMIT_AS`` = ``--memory`` + 6 GiB: a backstop on address space (importing
  torch alone reserves about 3 GiB of it without using the memory).
* ``RLIMIT_CPU`` = ``--cpu``: CPU seconds; past it the kernel is killed (SIGXCPU).
* ``RLIMIT_FSIZE`` = ``--fsize``: the largest file the kernel may write (writes
  beyond it fail with ``OSError``: SIGXFSZ is ignored), ``RLIMIT_CORE`` = 0.
* ``RLIMIT_NPROC`` (sandbox only): processes and threads of the sandbox's own uid.
* ``PR_SET_PDEATHSIG``: the kernel dies with the process that started it.
* One BLAS/OpenMP thread, so parallel graders do not oversubscribe the CPU.

The launcher's pid (or the kernel's, without a sandbox) is appended to
``$COURSE_GRADER_PIDFILE`` so the grader can kill it by id.
"""

import json
import os
import resource
import signal
import sys

GIB = 1024**3


def _set(limit: int, value: int) -> None:
    soft, hard = resource.getrlimit(limit)
    if hard != resource.RLIM_INFINITY:
        value = min(value, hard)
    resource.setrlimit(limit, (value, hard if hard != resource.RLIM_INFINITY else value))


def _die_with_parent() -> None:
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() == 1 and not os.environ.get("COURSE_SANDBOXED"):  # the parent is already gone
            os._exit(1)
    except Exception:  # noqa: BLE001  (not Linux: rely on the grader's kill by pid)
        pass


def _limits(memory: int, cpu: int, fsize: int) -> None:
    if memory > 0:
        _set(resource.RLIMIT_DATA, memory)
        _set(resource.RLIMIT_AS, memory + 6 * GIB)
    if cpu > 0:
        _set(resource.RLIMIT_CPU, cpu)
    if fsize > 0:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        _set(resource.RLIMIT_FSIZE, fsize)
    _set(resource.RLIMIT_CORE, 0)


def _record_pid() -> None:
    pidfile = os.environ.pop("COURSE_GRADER_PIDFILE", None)
    if pidfile:
        with open(pidfile, "a") as f:
            f.write(f"{os.getpid()}\n")


def _ancestors(path: str) -> list[str]:
    out, p = [], os.path.dirname(path)
    while p not in ("/", ""):
        out.append(p)
        p = os.path.dirname(p)
    return out[::-1]


def bwrap_argv(spec: dict, cwd: str, connection: str) -> list[str]:
    """The bwrap command line for the plan ``spec`` (see sandbox.py), the kernel at the end."""
    a = [spec["bwrap"], "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
         "--die-with-parent", "--new-session", "--clearenv"]
    if spec["mode"] == "user":  # not root: a user namespace, no capabilities inside
        a += ["--unshare-user", "--uid", str(spec["uid"]), "--gid", str(spec["uid"]), "--cap-drop", "ALL"]
    for top in ("/usr", "/etc"):
        a += ["--ro-bind", top, top]
    for link in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(link):
            a += ["--symlink", os.readlink(link), link]
        elif os.path.isdir(link):
            a += ["--ro-bind", link, link]
    a += ["--proc", "/proc", "--dev", "/dev"]
    # Every mount after the mounts of the folders that hold it (parents first), so that no mount hides
    # another wherever the course, its environment or the scratch folder live (/tmp is private here).
    mounts = [(p, ["--ro-bind", spec.get("ro_from", {}).get(p, p), p]) for p in spec["ro"]]
    mounts += [(p, ["--size", str(spec["scratch_size"]), "--perms", "0777", "--tmpfs", p])
               for p in {cwd, *spec["tmpfs"]}]
    mounts.append((spec["ipc_dir"], ["--bind", spec["ipc_dir"], spec["ipc_dir"]]))
    mounts.sort(key=lambda m: (m[0].rstrip("/").count("/"), m[0]))
    made: set[str] = {"/usr", "/etc"}
    for path, args in mounts:
        for d in _ancestors(path):
            if d not in made:  # a folder of the sandbox's root (or of a tmpfs mounted above) to mount into
                made.add(d)
                a += ["--perms", "0755", "--dir", d]
        made.add(path)
        a += args
    a += ["--chdir", cwd]
    for k, v in {**spec["env"], "COURSE_SANDBOXED": "1"}.items():  # inside, the parent is bwrap's pid 1
        a += ["--setenv", k, v]
    a += ["--"]
    if spec["mode"] == "root":  # bwrap sets up the mounts as root; the kernel runs as an unprivileged uid
        a += [spec["setpriv"], f"--reuid={spec['uid']}", f"--regid={spec['uid']}", "--clear-groups",
              "--no-new-privs", "--inh-caps=-all", "--bounding-set=-all", "--"]
    a += [spec["python"], spec["kernel_script"], "--memory", str(spec["memory"]), "--cpu", str(spec["cpu"]),
          "--fsize", str(spec["fsize"]), "--", "-f", connection]
    return a


def launch(kernel_args: list[str]) -> None:
    """Outside the sandbox: prepare and exec bwrap (see the module docstring)."""
    with open(os.environ["COURSE_SANDBOX_SPEC"]) as f:
        spec = json.load(f)
    conn_src = kernel_args[kernel_args.index("-f") + 1]
    conn = os.path.join(spec["ipc_dir"], "connection.json")
    with open(conn_src) as f:
        data = f.read()
    fd = os.open(conn, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o400)
    with os.fdopen(fd, "w") as f:
        f.write(data)
    if spec["mode"] == "root":
        os.chown(conn, spec["uid"], spec["uid"])
    _record_pid()
    _die_with_parent()
    _limits(spec["memory"], spec["cpu"] + 5, spec["fsize"])
    if spec["mode"] == "root" and spec.get("nproc"):
        _set(resource.RLIMIT_NPROC, spec["nproc"])  # counts the sandbox uid's processes only
    argv = bwrap_argv(spec, os.getcwd(), conn)
    os.execv(argv[0], argv)


def main() -> None:
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    opts, kernel_args = argv[:split], argv[split + 1 :]
    if opts == ["--sandbox"]:
        launch(kernel_args)
        return
    values = dict(zip(opts[::2], opts[1::2], strict=False))
    _record_pid()
    _die_with_parent()
    _limits(int(values.get("--memory", 0)), int(values.get("--cpu", 0)), int(values.get("--fsize", 0)))
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = "1"
    # The kernel must not find this folder's modules first.
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]

    # No history file: the cells run so far (hidden tests included) are not written to disk.
    sys.argv = ["ipykernel_launcher", *kernel_args, "--HistoryManager.hist_file=:memory:"]
    from ipykernel import kernelapp

    kernelapp.launch_new_instance()


if __name__ == "__main__":
    main()
