"""Training on N processes with ``torch.distributed``: what ``lib.train`` needs to run under ``torchrun`` (lesson 12).

The same script runs in one process (``python train.py``) and on N (``torchrun --standalone
--nproc_per_node=N train.py``, or ``--nnodes`` for several machines): ``setup()`` reads the
environment variables torchrun sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``) and joins the process group, with gloo on the CPU and NCCL on CUDA; without them it
changes nothing.  ``wrap`` puts the model in ``DistributedDataParallel`` (every rank holds the whole
model and averages gradients with an all-reduce) or shards it with FSDP2's ``fully_shard`` (every rank
holds 1/N of the parameters, gradients and optimizer state).  ``lib.train`` then shards each batch by
rank, all-reduces the reported loss, lets rank 0 alone print and write checkpoints, and saves full
(unsharded) state dicts, so a checkpoint written on N processes loads on M.

``launch(fn, nprocs)`` starts the processes from Python (``torch.multiprocessing``), for notebooks
and tests; a rank that raises stops the others and its error is raised in the caller.

Shapes: **B** the global batch (all ranks together), **N** the world size, B / N per rank.

    ctx = setup()                                   # one process: rank 0 of 1
    model = wrap(GPT(cfg).to(ctx.device), "ddp")    # unchanged in one process
    opt = torch.optim.AdamW(param_groups(model, 0.1), lr=2e-3)
    batches = RandomWindows(train, block_size=128, batch_size=32)   # each rank takes 32 / N windows
    train_lm(model, batches, optimizer=opt, steps=1000)
    teardown()
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
from torch import Tensor, nn

from lib.runtime import device as default_device

__all__ = [
    "Context", "context", "setup", "teardown", "backend_for", "wrap", "unwrap", "is_sharded", "per_rank",
    "all_reduce_mean", "print0", "no_sync", "full_state_dict", "load_full_state_dict", "launch", "RankFailed",
    "free_port",
]

_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class Context:
    """Where this process stands: its rank among ``world_size`` processes and the device it computes on."""

    rank: int = 0  # this process's number, 0 .. world_size - 1
    world_size: int = 1  # processes in all (on every machine)
    local_rank: int = 0  # this process's number on its machine (its GPU index)
    device: torch.device = torch.device("cpu")
    backend: str | None = None  # "gloo" or "nccl"; None in one process

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that prints, plots and writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1 or self.backend is not None


def _dist_ready() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def context() -> Context:
    """The current process's ``Context``: from the process group if one is initialised, else rank 0 of 1."""
    if not _dist_ready():
        return Context(device=default_device())
    dist = torch.distributed
    local = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
    backend = str(dist.get_backend())
    dev = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
    return Context(dist.get_rank(), dist.get_world_size(), local, dev, backend)


def backend_for(dev: torch.device | str) -> str:
    """The collective backend for a device: NCCL for CUDA, gloo otherwise.

    Raises:
        RuntimeError: this PyTorch build has no ``torch.distributed`` or lacks the backend the device needs.
    """
    dev = torch.device(dev)
    if not torch.distributed.is_available():
        raise RuntimeError("this PyTorch build has no torch.distributed (some macOS and Windows wheels); "
                           "install a build with distributed support to run on several processes")
    if dev.type == "cuda":
        if not torch.distributed.is_nccl_available():
            raise RuntimeError("device cuda needs the NCCL backend, which this PyTorch build lacks; "
                               "run on the CPU with gloo (COURSE_DEVICE=cpu) or install a CUDA build with NCCL")
        return "nccl"
    if not torch.distributed.is_gloo_available():
        raise RuntimeError(f"device {dev.type} needs the gloo backend, which this PyTorch build lacks")
    return "gloo"


def setup(device: torch.device | str | None = None, *, timeout: float | None = None) -> Context:
    """Join the process group that ``torchrun`` (or ``launch``) describes in the environment; else do nothing.

    With ``WORLD_SIZE`` set (torchrun sets it, with ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
    ``MASTER_PORT``), initialise ``torch.distributed`` with the backend of the device: NCCL with
    ``cuda:LOCAL_RANK`` (one GPU per process) when CUDA is there, else gloo on the CPU (MPS has no
    collective backend, so an Apple GPU trains on its CPU here).  Without it, return rank 0 of 1 on
    ``lib.runtime.device()``.  Calling it again returns the current context.

    Args:
        device: force a device type ("cpu" or "cuda"); default CUDA if available, else the CPU.
        timeout: seconds a collective may wait for the other ranks before failing (torch's default if None).

    Raises:
        RuntimeError: part of torchrun's environment is missing, or the backend is unavailable.
    """
    if _dist_ready():
        return context()
    if "WORLD_SIZE" not in os.environ:
        return Context(device=torch.device(device) if device is not None else default_device())
    missing = [k for k in _ENV if k not in os.environ]
    if missing:
        raise RuntimeError(f"WORLD_SIZE is set but {', '.join(missing)} not: start the script with torchrun "
                           "(torchrun --standalone --nproc_per_node=N script.py), which sets them all")
    rank, world, local = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    kind = torch.device(device).type if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
    backend = backend_for(kind)
    if kind == "cuda":
        if local >= torch.cuda.device_count():
            raise RuntimeError(f"LOCAL_RANK {local} needs GPU {local}, but this machine has "
                               f"{torch.cuda.device_count()}: start at most that many processes per node")
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    kwargs = {"timeout": timedelta(seconds=timeout)} if timeout is not None else {}
    if kind == "cuda":
        kwargs["device_id"] = dev
    torch.distributed.init_process_group(backend, rank=rank, world_size=world, **kwargs)
    return Context(rank, world, local, dev, backend)


def teardown() -> None:
    """Leave the process group (if any): every rank calls it at the end of the script."""
    if _dist_ready():
        torch.distributed.destroy_process_group()


def per_rank(batch_size: int, world_size: int | None = None) -> int:
    """The batch each rank takes: ``batch_size / world_size``; ``ValueError`` when it does not divide."""
    world = context().world_size if world_size is None else world_size
    if batch_size % world:
        raise ValueError(f"the batch of {batch_size} does not split over {world} processes: choose a batch size "
                         f"divisible by the number of processes (e.g. {batch_size - batch_size % world or world})")
    return batch_size // world


def print0(*args: object, **kwargs: object) -> None:
    """``print`` on rank 0 only."""
    if context().is_main:
        print(*args, **kwargs)  # type: ignore[call-overload]


def all_reduce_mean(value: float | Tensor) -> float:
    """The mean of ``value`` over all ranks (the value itself in one process), as a float."""
    if not _dist_ready():
        return float(value)
    t = torch.as_tensor(value, dtype=torch.float64).detach().reshape(1)
    if torch.distributed.get_backend() == "nccl":
        t = t.to(torch.device("cuda", torch.cuda.current_device()))
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
    return float(t) / torch.distributed.get_world_size()


def _fsdp_units(model: nn.Module) -> list[nn.Module]:
    """The modules that each become one FSDP unit: every element of every ``nn.ModuleList`` (the blocks)."""
    return [m for lst in model.modules() if isinstance(lst, nn.ModuleList) for m in lst]


def wrap(model: nn.Module, strategy: str = "ddp", *, bucket_cap_mb: float | None = None) -> nn.Module:
    """Prepare ``model`` (already on ``context().device``) for data-parallel training on the current process group.

    * ``"ddp"``: ``DistributedDataParallel``.  It broadcasts rank 0's parameters at construction, then
      all-reduces (averages) the gradients during ``backward``, bucket by bucket (``bucket_cap_mb``,
      torch's default 25 MB), overlapping communication with the rest of the backward pass.
    * ``"fsdp"``: FSDP2's ``fully_shard`` on every block (each element of an ``nn.ModuleList``) and on the
      root.  Each rank keeps 1/N of every parameter, of its gradient and of the optimizer state; a unit's
      full parameters are all-gathered just before its forward and backward, and gradients
      reduce-scattered after.  Build the model with the same seed on every rank (nothing is broadcast),
      and the optimizer after wrapping.

    In one process (no process group) the model is returned unchanged.
    """
    if strategy not in ("ddp", "fsdp"):
        raise ValueError(f"strategy must be 'ddp' or 'fsdp', got {strategy!r}")
    if not _dist_ready():
        return model
    ctx = context()
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        kwargs = {} if bucket_cap_mb is None else {"bucket_cap_mb": bucket_cap_mb}
        ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids, **kwargs)
    from torch.distributed.fsdp import fully_shard

    for unit in _fsdp_units(model):
        fully_shard(unit)
    fully_shard(model)
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a ``DistributedDataParallel`` (an FSDP-sharded model is its own module)."""
    # the class itself, from where it is defined: a lesson's forbid() may patch torch.nn.parallel's name
    from torch.nn.parallel.distributed import DistributedDataParallel

    return model.module if isinstance(model, DistributedDataParallel) else model


def is_sharded(model: nn.Module) -> bool:
    """Whether ``model``'s parameters are sharded (FSDP2: they are ``DTensor``s)."""
    if not torch.distributed.is_available():
        return False
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


@contextlib.contextmanager
def no_sync(model: nn.Module, skip: bool = True) -> Iterator[None]:
    """Inside: ``backward`` accumulates gradients locally, without communication (when ``skip``).

    Gradient accumulation runs its inner micro-batches under it and the last one outside, so the
    gradients are averaged across ranks once per optimizer step (DDP's ``no_sync``, FSDP2's
    ``set_requires_gradient_sync(False)``).  In one process, or with ``skip=False``, it does nothing.
    """
    from torch.nn.parallel.distributed import DistributedDataParallel

    if not skip or not _dist_ready():
        yield
    elif isinstance(model, DistributedDataParallel):
        with model.no_sync():
            yield
    elif hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    else:
        yield


def full_state_dict(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> tuple[dict, dict | None]:
    """The model's and optimizer's whole (unsharded) state, on the CPU, keyed by parameter name.

    The same format from one process, DDP (no ``module.`` prefix) or FSDP (shards gathered), so a
    checkpoint loads whatever the number of processes (``torch.distributed.checkpoint.state_dict``).
    Under a process group every rank must call it (it gathers); the result is complete on rank 0.
    """
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    if optimizer is None:
        return get_model_state_dict(model, options=options), None
    return get_state_dict(model, optimizer, options=options)


def load_full_state_dict(model: nn.Module, optimizer: torch.optim.Optimizer | None, model_state: dict,
                         optimizer_state: dict | None = None) -> None:
    """Load what ``full_state_dict`` returned into a model and optimizer set up for any number of processes.

    Every rank passes the whole state (each reads the checkpoint file); an FSDP rank keeps its shard.
    """
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_state_dict,
    )

    options = StateDictOptions(full_state_dict=True)
    if optimizer is None:
        set_model_state_dict(model, model_state, options=options)
    else:
        if optimizer_state is None:
            raise ValueError("an optimizer was given but the checkpoint holds no optimizer state")
        if not optimizer_state["state"]:  # no moments yet (or plain SGD): torch's loader needs one, so copy the groups
            set_model_state_dict(model, model_state, options=options)
            if len(optimizer_state["param_groups"]) != len(optimizer.param_groups):
                raise ValueError(f"the checkpoint's optimizer has {len(optimizer_state['param_groups'])} parameter "
                                 f"groups, this one {len(optimizer.param_groups)}")
            for group, saved in zip(optimizer.param_groups, optimizer_state["param_groups"], strict=True):
                group.update({k: v for k, v in saved.items() if k != "params"})
            return
        set_state_dict(model, optimizer, model_state_dict=model_state, optim_state_dict=optimizer_state,
                       options=options)


# ---------------------------------------------------------------------------
# Starting N processes from Python (notebooks and tests); torchrun does the same from the shell
# ---------------------------------------------------------------------------


class RankFailed(RuntimeError):
    """A rank of ``launch`` raised or died; the other ranks were stopped.

    Attributes:
        rank: the rank that failed first (-1 when the run timed out).
        error: the name of its exception type ("" when it died without one).
    """

    def __init__(self, message: str, rank: int, error: str = "") -> None:
        super().__init__(message)
        self.rank, self.error = rank, error


def free_port() -> int:
    """A TCP port on localhost that nothing listens on now (for the rendezvous)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, fn: Callable, args: tuple, world: int, port: int, out: str, device: str | None,
            threads: int) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(threads)
    try:
        setup(device)
        result = fn(*args)
        torch.save(result, Path(out) / f"{rank}.pt")
    except BaseException as e:
        # what failed and when, as text (the exception may not pickle); the parent reports the first failure, not
        # the other ranks' "connection closed" that follows it
        record = {"time": time.time(), "type": type(e).__name__, "message": str(e), "traceback": traceback.format_exc()}
        (Path(out) / f"{rank}.err").write_text(json.dumps(record))
        raise RuntimeError(f"rank {rank} of {world} raised {type(e).__name__}") from None
    finally:
        teardown()


def _first_failure(out: str, exit_codes: list[int | None]) -> RankFailed:
    """The failure that caused the others: a rank that died without an error, else the earliest error recorded.

    When one rank fails, the others fail next ("connection closed" in their collectives) or are stopped by the
    launcher (SIGTERM); neither is the cause.
    """
    nprocs, records = len(exit_codes), []
    for r, code in enumerate(exit_codes):
        path = Path(out) / f"{r}.err"
        if path.exists():
            records.append((json.loads(path.read_text()), r))
        elif code not in (0, None, -signal.SIGTERM):  # died without raising: killed, or os._exit
            return RankFailed(f"rank {r} of {nprocs} died (exit code {code}); the other ranks were stopped", r)
    if not records:
        return RankFailed(f"the {nprocs} processes were stopped (exit codes {exit_codes})", -1)
    record, rank = min(records, key=lambda x: x[0]["time"])
    return RankFailed(f"rank {rank} of {nprocs} raised {record['type']}: {record['message']}; the other ranks were "
                      f"stopped.\n\n{record['traceback']}", rank, record["type"])


def launch(fn: Callable, nprocs: int, *args: object, start_method: str = "fork", device: str | None = "cpu",
           threads: int = 1, timeout: float | None = None) -> list:
    """Run ``fn(*args)`` on ``nprocs`` processes that form a process group; return each rank's result.

    Each process gets torchrun's environment variables (``RANK``, ``WORLD_SIZE``, ...; the rendezvous on a
    free localhost port) and calls ``setup(device)`` before ``fn``, so ``fn`` is written as a torchrun
    script's body is.  ``start_method="fork"`` runs functions defined in a notebook (Linux and macOS only:
    on a GPU, fork before CUDA is initialised); ``"spawn"`` starts fresh interpreters and needs ``fn``
    importable.  If one rank raises or dies, the others are stopped and ``RankFailed`` names it.

    Args:
        fn: what each rank runs; it reads its rank from ``context()``; its return value must pickle.
        nprocs: the number of processes N.
        device: "cpu" (gloo) or "cuda" (NCCL, one GPU per process); None picks CUDA when present.
        threads: ``torch.set_num_threads`` in each process (one per core: don't oversubscribe).
        timeout: seconds to wait for all ranks before stopping them (None: no limit).

    Returns:
        ``[result of rank 0, result of rank 1, ...]``.
    """
    import torch.multiprocessing as mp

    if not isinstance(nprocs, int) or nprocs < 1:
        raise ValueError(f"nprocs must be a positive int, got {nprocs!r}")
    if start_method not in mp.get_all_start_methods():
        raise ValueError(f"start_method {start_method!r} is not available here; use one of "
                         f"{mp.get_all_start_methods()}")
    if start_method == "fork":
        import torch._dynamo  # noqa: F401  (the first optimizer imports it: once here, not once in every child)
    with tempfile.TemporaryDirectory(prefix="lib-launch-") as out:
        ctx = mp.start_processes(_worker, args=(fn, args, nprocs, free_port(), out, device, threads),
                                 nprocs=nprocs, join=False, start_method=start_method)
        deadline = None if timeout is None else time.monotonic() + timeout
        failed = False
        try:
            while not ctx.join(None if deadline is None else max(0.0, deadline - time.monotonic())):
                if deadline is not None and time.monotonic() >= deadline:
                    raise RankFailed(f"the {nprocs} processes did not finish within {timeout} s; all were stopped",
                                     -1)
        except (mp.ProcessRaisedException, mp.ProcessExitedException):  # torch has stopped the other ranks
            failed = True
        finally:
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
                p.join()
        if failed:
            raise _first_failure(out, [p.exitcode for p in ctx.processes])
        return [torch.load(Path(out) / f"{r}.pt", weights_only=False) for r in range(nprocs)]
