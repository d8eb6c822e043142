"""Launch an IPython kernel under resource limits (the grader's kernelspec runs this file).

    python sandbox_kernel.py --memory BYTES --cpu SECONDS --fsize BYTES --pidfile PATH -- -f CONNECTION_FILE

Run as a plain script (not ``-m``) so that nothing from the course is imported
before the limits are in place.  Limits, all best effort and per process:

* ``RLIMIT_DATA`` = ``--memory``: heap and private writable mappings, which is
  what tensors and Python objects take; an allocation beyond it fails with
  ``MemoryError`` / torch's "can't allocate memory" instead of taking the host down.
* ``RLIMIT_AS`` = ``--memory`` + 6 GiB: a backstop on address space (importing
  torch alone reserves about 3 GiB of it without using the memory).
* ``RLIMIT_CPU`` = ``--cpu``: CPU seconds; past it the kernel is killed (SIGXCPU).
* ``RLIMIT_FSIZE`` = ``--fsize``: the largest file the kernel may write (writes
  beyond it fail with ``OSError``: SIGXFSZ is ignored), ``RLIMIT_CORE`` = 0.
* ``PR_SET_PDEATHSIG``: the kernel dies with the grading worker that started it,
  so a killed worker never leaves a spinning kernel behind.
* One BLAS/OpenMP thread, so parallel graders do not oversubscribe the CPU.

The pid is appended to ``--pidfile`` (or ``$COURSE_GRADER_PIDFILE``) so the grader can kill this process by id.
"""

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
        if os.getppid() == 1:  # the parent is already gone
            os._exit(1)
    except Exception:  # noqa: BLE001  (not Linux: rely on the grader's kill by pid)
        pass


def main() -> None:
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    opts, kernel_args = argv[:split], argv[split + 1 :]
    values = dict(zip(opts[::2], opts[1::2], strict=False))
    memory = int(values.get("--memory", 0))
    cpu = int(values.get("--cpu", 0))
    fsize = int(values.get("--fsize", 0))
    pidfile = values.get("--pidfile") or os.environ.pop("COURSE_GRADER_PIDFILE", None)

    if pidfile:
        with open(pidfile, "a") as f:
            f.write(f"{os.getpid()}\n")
    _die_with_parent()
    if memory > 0:
        _set(resource.RLIMIT_DATA, memory)
        _set(resource.RLIMIT_AS, memory + 6 * GIB)
    if cpu > 0:
        _set(resource.RLIMIT_CPU, cpu)
    if fsize > 0:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        _set(resource.RLIMIT_FSIZE, fsize)
    _set(resource.RLIMIT_CORE, 0)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = "1"
    # The kernel must not find this folder's modules first.
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]

    sys.argv = ["ipykernel_launcher", *kernel_args]
    from ipykernel import kernelapp

    kernelapp.launch_new_instance()


if __name__ == "__main__":
    main()
