# %% [markdown]
# # 12 · Beyond one process: data-parallel and sharded training, proven equal to one process
#
# Lesson 11 trained a GPT in one process. A model that grows outgrows one process: its steps take too long, and
# soon its weights, gradients and optimizer state no longer fit in one accelerator's memory. Real training runs
# on many processes, one per GPU, on one machine or many, with `torch.distributed`: processes started by
# `torchrun`, talking through a *backend* (NCCL between GPUs, gloo on CPUs). This lesson runs the real thing on
# two CPU processes with gloo, so everything here runs on a laptop and in CI. In this lesson you will
#
# 1. see why averaging the gradients of N shards of a batch gives exactly the gradient of the whole batch, so that
#    N processes train the same model as one (data parallelism),
# 2. learn the **all-reduce**, what a ring all-reduce costs ($2(N-1)/N$ of the gradient bytes per process), and
#    why DDP groups gradients in **buckets** and overlaps their communication with the backward pass,
# 3. see why optimizer state dominates memory (lesson 10's 16 bytes per parameter) and how **sharding** (ZeRO,
#    FSDP) divides it by N,
# 4. write one data-parallel training step with `dist.all_reduce` and check it against PyTorch's
#    `DistributedDataParallel` (exercise 1),
# 5. measure on this machine: one process against two, the all-reduce against the ring formula for several
#    bucket sizes, and each rank's optimizer state under FSDP against the prediction,
# 6. train lesson 11's GPT on two processes and reach the same validation loss as one process on the same tokens,
# 7. predict on paper the step time of lesson 11's model and of GPT-2 (124M) on 8 GPUs of one machine and on
#    2 machines, and find where communication starts to dominate; then explain the seeds of data parallelism
#    (exercise 2).
#
# Shapes and sizes: **N** processes (the *world size*), **r** a process's *rank* ($0 \dots N-1$), **B** the
# global batch (all ranks together, $B/N$ per rank), **P** parameters, **S** bytes of a message.
#
# **Points in this lesson: 7** (exercise 1: 5, exercise 2: 2, graded by hand).
#
# *Run time:* full mode trains lesson 11's model briefly on one and on two processes and times steps and
# all-reduces: a few minutes on a 2-core CPU. `COURSE_QUICK=1` shrinks every run to a few steps.
#
# **Running any lesson's training on N processes.** `lib.train.train_lm` runs unchanged under `torchrun`:
# put the training in a script that calls `lib.distributed.setup()` first and `wrap(model)` before building the
# optimizer, then start it with `torchrun --standalone --nproc_per_node=N script.py` (one machine) or
# `torchrun --nnodes=2 --node_rank=0|1 --rdzv_endpoint=HOST:PORT --nproc_per_node=8 script.py` (two machines).
# The README shows the script.

# %%
import statistics
import time

import matplotlib.pyplot as plt
import pandas as pd
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from lib.checks import check_close, passed
from lib.data import fetch
from lib.distributed import context, launch, per_rank, unwrap, wrap
from lib.gpt import GPT, GPTConfig
from lib.memory import adam_state_bytes
from lib.runtime import pick, seed_everything
from lib.train import RandomWindows, cosine_schedule, lm_loss, param_groups, train_lm

seed_everything(0)
N = 2  # the processes of this lesson's runs: gloo on the CPU, one core each

# %% [markdown]
# ## 1. Data parallelism: N copies of the model, one batch
#
# Every process (*rank*) holds a full copy of the model and takes its own $B/N$ examples of the batch. Each
# computes the gradient of the mean loss over its shard; then the ranks **average** their gradients, and every
# rank applies the same update to the same weights. The average is exactly the gradient of the whole batch,
# because the mean loss over $B$ examples is the mean of the $N$ shard means (equal shards):
#
# $$\nabla_\theta \frac{1}{B}\sum_{i=1}^{B} \ell_i(\theta)
#   = \frac{1}{N} \sum_{r=0}^{N-1} \nabla_\theta \Big(\frac{N}{B} \sum_{i \in \text{shard}_r} \ell_i(\theta)\Big).$$
#
# So N processes with $B/N$ examples each train *the same model* as one process with $B$: same weights after
# every step, up to the rounding of adding numbers in another order. `tests/test_distributed.py` checks it on
# two processes (DDP and FSDP, with and without gradient accumulation) against one process, after five AdamW
# steps of a small GPT, to a tolerance far below anything training notices. What changes is the time: each rank
# does $1/N$ of the arithmetic, plus the communication of the average.
#
# Two conditions make the replicas stay equal: they start equal (DDP broadcasts rank 0's weights when it wraps
# the model), and every rank sees different examples (`lib.train.RandomWindows` draws the same global batch on
# every rank from the same generator and each rank keeps its slice, so the ranks together see exactly what one
# process would).
#
# ## 2. The all-reduce, and what a ring costs
#
# The averaging is one *collective* operation: **all-reduce**. Every rank contributes a tensor and every rank
# ends with the elementwise sum (then each divides by $N$). `torch.distributed` starts with a *process group*:
# $N$ processes that know each other's address, here through environment variables (`RANK`, `WORLD_SIZE`,
# `MASTER_ADDR`, `MASTER_PORT`) that `torchrun` sets, or `lib.distributed.launch` from a notebook. A first run on
# two processes, each holding a different tensor:

# %%
def show_all_reduce() -> list:
    """What each rank runs: a tensor that depends on the rank, summed over all ranks in place."""
    ctx = context()
    t = torch.full((3,), float(ctx.rank + 1))  # rank 0 holds 1s, rank 1 holds 2s
    before = t.clone()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)  # every rank now holds the sum
    return [ctx.rank, ctx.world_size, ctx.backend, before.tolist(), t.tolist()]


for rank, world, backend, before, after in launch(show_all_reduce, N):
    print(f"rank {rank} of {world} ({backend}): {before} -> all_reduce(SUM) -> {after}")

# %% [markdown]
# **What it costs.** Send every gradient to rank 0, add, send the sum back: rank 0 receives and sends $(N-1)\,S$
# bytes, and the others wait for it. The **ring all-reduce** (Patarasuttinut and Yuan 2009; what NCCL and gloo
# use for large tensors) keeps every link busy instead. Cut the tensor into $N$ chunks and arrange the ranks in a
# ring. In $N-1$ steps of *reduce-scatter*, each rank sends one chunk to its right neighbour and adds the chunk
# it receives from the left, so that after them each rank holds the complete sum of one chunk; in $N-1$ steps of
# *all-gather* the summed chunks travel once around the ring. Each step moves $S/N$ bytes per rank, so each rank
# sends
#
# $$2\,(N-1)\,\frac{S}{N} \text{ bytes, and the all-reduce takes } \quad
#   t(S) \approx 2(N-1)\,\alpha + \frac{2(N-1)}{N}\,\frac{S}{\beta},$$
#
# with $\alpha$ the latency of one message and $\beta$ the bandwidth of one link. The bandwidth term hardly grows
# with $N$ (it tends to $2S/\beta$): a thousand GPUs average their gradients in about the time two do, if the
# links are equally fast. Sections 5 and 7 measure $\alpha$ and $\beta$ here and use published ones for GPUs.
#
# **Buckets and overlap.** Gradients become ready during `backward()` from the last layer to the first.
# `DistributedDataParallel` does not wait for the end: it groups the gradients into **buckets** (about 25 MB;
# the first bucket 1 MB) in that order, and all-reduces each bucket as soon as its last gradient is written, while
# the backward pass goes on with earlier layers. Communication then hides behind computation. Small buckets start
# sooner but pay the latency $\alpha$ more often; one large bucket pays it once but cannot overlap.
#
# ## 3. Memory: why optimizer state dominates, and sharding
#
# Lesson 10 counted a training step's memory: in float32 with Adam, **16 bytes per parameter**: 4 for the
# weight, 4 for its gradient, 8 for Adam's two moments; with mixed precision, **20** (a bf16 copy of the
# weights and bf16 gradients besides the float32 master weights). Activations come on top. Data parallelism
# replicates all of it: every rank keeps the whole $16P$, so N GPUs fit no larger a model than one.
#
# **Sharding** (ZeRO, Rajbhandari et al. 2020; PyTorch's *Fully Sharded Data Parallel*, FSDP) keeps $1/N$ of
# it per rank. Stage 1 shards Adam's moments (each rank updates only its $1/N$ of the weights, then the new
# weights are all-gathered), stage 2 the gradients too (a *reduce-scatter* instead of the all-reduce: each rank
# receives only the sum of its shard), stage 3 the weights themselves (FSDP: a layer's full weights are
# all-gathered just before its forward and again before its backward, then freed). Memory per rank falls from
# $16P$ to $16P/N$ plus one layer's full weights; communication grows from the all-reduce's $2(N-1)S/N$ to
# $3(N-1)S/N$ (two all-gathers and a reduce-scatter), half as much again. `lib.distributed.wrap(model, "fsdp")`
# uses FSDP2's `fully_shard` on every block and on the whole model; section 5 measures each rank's optimizer
# state.
#
# ## 4. Exercise 1: a data-parallel step with `dist.all_reduce` (5 points)
#
# Write `data_parallel_step(model, optimizer, x, y)`, one training step of one rank on its share `(x, y)` of the
# batch: clear the gradients, compute the cross-entropy of `model(x)` against `y`, `backward()`, then replace
# **every** parameter's gradient by its **mean over all ranks** with `dist.all_reduce` (it sums in place; divide
# by `dist.get_world_size()`), then `optimizer.step()`. Return this rank's loss as a float. Do not use
# `DistributedDataParallel`: this is what it does for you (in buckets, during the backward pass).
#
# **How the notebook starts processes.** `train_by_hand` below runs your step on two processes with
# `lib.distributed.launch`, which starts them with `torch.multiprocessing` and the **fork** start method: a forked
# process is a copy of this one, so it has your function. The other ways need the function importable from a
# file: the *spawn* method pickles a function by its module and name, and a fresh interpreter cannot import a
# notebook's cell; `torchrun` starts a script. Fork exists on Linux and macOS (use WSL on Windows), and on a GPU
# it must happen before CUDA is initialised; scripts, as in the README, use `torchrun`.
#
# The check trains a small classifier for a few steps of plain SGD with your step on two processes and with
# `DistributedDataParallel` on two processes, and compares the parameters of every rank.

# %%
TOY_BATCH = 12  # the global batch: 6 per rank on 2 processes, 4 on 3


def toy_model(seed: int) -> nn.Module:
    torch.manual_seed(seed)  # the same initial weights on every rank
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4))


def toy_batches(steps: int, seed: int):
    g = torch.Generator().manual_seed(seed + 1)
    return torch.randn(steps, TOY_BATCH, 8, generator=g), torch.randint(0, 4, (steps, TOY_BATCH), generator=g)


def ddp_step(model, optimizer, x, y) -> float:
    """The same step for a model in DistributedDataParallel: its backward() averages the gradients itself."""
    optimizer.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()
    return loss.item()


def data_parallel_run(step, steps: int, seed: int, use_ddp: bool = False) -> dict:
    """What each rank runs: the toy model, plain SGD, `steps` calls of `step` on this rank's share of each batch."""
    ctx = context()
    model = wrap(toy_model(seed), "ddp") if use_ddp else toy_model(seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    xs, ys = toy_batches(steps, seed)  # (steps, B, 8), (steps, B)
    n = per_rank(TOY_BATCH, ctx.world_size)
    mine = slice(ctx.rank * n, (ctx.rank + 1) * n)  # this rank's B / N examples
    losses = [step(model, optimizer, xs[s, mine], ys[s, mine]) for s in range(steps)]
    params = torch.cat([p.detach().flatten() for p in unwrap(model).parameters()])  # (P,)
    return {"params": params, "losses": losses}


def ddp_reference(steps: int, seed: int, nprocs: int) -> list[dict]:
    return launch(data_parallel_run, nprocs, ddp_step, steps, seed, True)


# %% nbgrader={"grade": false, "grade_id": "ex1_dp_step", "locked": false, "schema_version": 3, "solution": true, "task": false}
def data_parallel_step(model: nn.Module, optimizer: torch.optim.Optimizer, x, y) -> float:
    """One step of this rank on its share (x, y): gradients averaged over all ranks with dist.all_reduce."""
    ### BEGIN SOLUTION
    optimizer.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    world = dist.get_world_size()
    for p in model.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)  # every rank now holds the sum
            p.grad /= world  # the mean: the gradient of the whole batch's mean loss
    optimizer.step()
    return loss.item()
    ### END SOLUTION


def train_by_hand(steps: int = 3, seed: int = 0, nprocs: int = 2) -> list[dict]:
    """Given (not part of the exercise): your step on `nprocs` processes; each rank's parameters and losses."""
    return launch(data_parallel_run, nprocs, data_parallel_step, steps, seed)


# %% nbgrader={"grade": true, "grade_id": "ex1_dp_step_check", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
def _mistakes() -> dict:
    """Typical wrong steps, written out; each runs on the same processes as yours, to name what yours matches."""
    world = dist.get_world_size

    def step_with(average, clear: bool = True):
        def step(model, opt, x, y):
            if clear:
                opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            for p in model.parameters():
                average(p)
            opt.step()
            return loss.item()
        return step

    def mean(p):
        dist.all_reduce(p.grad)
        p.grad /= world()

    return {
        "with the gradients summed, not averaged: all_reduce sums, so divide by dist.get_world_size()":
            step_with(lambda p: dist.all_reduce(p.grad)),
        "if every rank stepped with its own gradients: all-reduce them after backward() and before "
        "optimizer.step() (all-reducing before backward() averages nothing)": step_with(lambda p: None),
        "with only the weight matrices averaged: every parameter's gradient, the biases too":
            step_with(lambda p: mean(p) if p.dim() > 1 else None),
        "without clearing the gradients: backward() adds to the previous step's, so zero them first":
            step_with(mean, clear=False),
    }


def check_by_hand(steps: int, seed: int, nprocs: int, runs=None) -> None:
    """Your step on `nprocs` processes against DistributedDataParallel's, every rank's parameters and losses."""
    try:
        runs = train_by_hand(steps, seed, nprocs) if runs is None else runs
    except Exception as err:  # a rank raised: the launcher stopped the others; say what it was
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        if "raised NotImplementedError" in first:
            raise NotImplementedError("data_parallel_step is not written yet") from None
        raise AssertionError(f"your data_parallel_step failed, so every rank was stopped: {first}") from None
    ref = ddp_reference(steps, seed, nprocs)
    if not isinstance(runs, list) or len(runs) != nprocs:
        raise AssertionError(f"train_by_hand must return one result per rank ({nprocs}); edit only your step")
    variants = {what: (lambda fn=fn: launch(data_parallel_run, nprocs, fn, steps, seed)[0]["params"])
                for what, fn in _mistakes().items()}
    check_close(runs[0]["params"], ref[0]["params"], f"rank 0's parameters after {steps} steps on {nprocs} processes",
                variants=variants, atol=1e-6, rtol=1e-5)
    for r in range(1, nprocs):
        check_close(runs[r]["params"], runs[0]["params"], f"rank {r}'s parameters against rank 0's", atol=1e-6,
                    rtol=1e-5)
    for r in range(nprocs):
        kinds = {type(v).__name__ for v in runs[r]["losses"]}
        if kinds != {"float"}:
            raise AssertionError(f"data_parallel_step must return the loss as a float (loss.item()), got {kinds}")
        got = torch.tensor(runs[r]["losses"], dtype=torch.float64)
        check_close(got, torch.tensor(ref[r]["losses"], dtype=torch.float64),
                    f"the losses rank {r} returned (its own share's loss before each update, as a float)",
                    atol=1e-6, rtol=1e-5)


check_by_hand(steps=3, seed=0, nprocs=2)
passed("on 2 processes your data_parallel_step trains exactly as DistributedDataParallel does")

# %% nbgrader={"grade": true, "grade_id": "ex1_dp_step_hidden", "locked": true, "points": 3, "schema_version": 3, "solution": false, "task": false}
# Hidden tests: three processes, other seeds and steps, without DistributedDataParallel.
### BEGIN HIDDEN TESTS
from lib.checks import forbid

for steps, seed, nprocs in ((4, 5, 3), (2, 7, 2)):
    with forbid("torch.nn.parallel.DistributedDataParallel"):
        runs = train_by_hand(steps, seed, nprocs)
    check_by_hand(steps, seed, nprocs, runs=runs)
passed("hidden tests passed")
### END HIDDEN TESTS

# %% [markdown]
# With plain SGD a step that sums instead of averaging moves N times too far; with Adam the same mistake almost
# disappears (Adam divides each gradient by the root of its own running square, so a constant factor cancels but
# for $\epsilon$), which is why a wrong all-reduce can go unseen in real training. A check with SGD finds it.
#
# ## 5. Measured on this machine
#
# The processes below run on the 2 cores of the course's reference machine, one core each, and talk through gloo
# over the loopback interface: no network, so the bandwidth is that of copying memory between processes. The
# numbers of the stored run are printed by the cells; a rerun on another machine gives other ones.
#
# **One process against two.** Lesson 11's GPT (the same sizes; global batch of 16 windows of 128 characters),
# timed over a few steps: one process on one core, one process on two cores (PyTorch's own threads), two
# processes of one core each with `DistributedDataParallel`, and the same two processes with `no_sync`, which
# skips the all-reduce: the difference is what communication costs.

# %% tags=["nbval-ignore-output"]
text = fetch("tinyshakespeare").read_text(encoding="utf-8")
chars = sorted(set(text))
stoi = {ch: i for i, ch in enumerate(chars)}
data = torch.tensor([stoi[c] for c in text], dtype=torch.long)
n_train = int(0.9 * len(data))
train_data, val_data = data[:n_train], data[n_train:]
cfg = GPTConfig(vocab_size=len(chars), context_len=128, d_model=128, num_layers=4, num_heads=4, n_kv_heads=2)
if pick(full=False, quick=True):  # quick mode: a much smaller model, to run every cell
    cfg = GPTConfig(vocab_size=len(chars), context_len=32, d_model=32, num_layers=1, num_heads=2)
P = GPT(cfg).num_parameters()
TIME_BATCH, TIME_STEPS = pick(full=16, quick=4), pick(full=12, quick=1)
print(f"lesson 11's model: {P:,} parameters, {4 * P / 2**20:.2f} MiB of float32 gradients per step")


# %% tags=["nbval-ignore-output"]
def timed_steps(configs: dict, steps: int) -> dict:
    """Each rank: seconds per training step (median of `steps`, after 2 warm-up steps) and DDP's bucket count.

    The configurations take turns step by step, so a machine that gets busier slows them all alike.
    """
    ctx = context()
    runs = {}
    for label, (bucket_mb, sync) in configs.items():
        torch.manual_seed(0)
        model = GPT(cfg)
        if ctx.world_size > 1:
            model = wrap(model, "ddp", bucket_cap_mb=bucket_mb)
        opt = torch.optim.AdamW(param_groups(model, 0.1), lr=1e-3)
        batches = RandomWindows(train_data, block_size=cfg.context_len, batch_size=TIME_BATCH)
        runs[label] = (model, opt, batches, sync, [])
    for i in range(steps + 2):
        for model, opt, batches, sync, times in runs.values():
            x, y = next(batches)
            if ctx.world_size > 1:
                dist.barrier()
            start = time.perf_counter()
            with (model.no_sync() if not sync else torch.enable_grad()):  # no_sync: backward without all-reduce
                loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
                opt.zero_grad(set_to_none=True)
                loss.backward()
            opt.step()
            if i >= 2:
                times.append(time.perf_counter() - start)
    logged = lambda m: m._get_ddp_logging_data().get("num_buckets_reduced", 0) if ctx.world_size > 1 else 0  # noqa: E731
    return {label: (statistics.median(t), logged(m)) for label, (m, _, _, _, t) in runs.items()}


ddp_configs = {"DDP, buckets of 25 MB (default)": (25.0, True), "DDP, buckets of 1 MB": (1.0, True),
               "DDP, buckets of 0.1 MB": (0.1, True), "DDP, buckets of 0.01 MB": (0.01, True),
               "2 processes, no_sync (no all-reduce)": (25.0, False)}
one_core = launch(timed_steps, 1, {"1 process, 1 core": (None, True)}, TIME_STEPS)[0]
threads = torch.get_num_threads()
torch.set_num_threads(2)  # this process itself, on both cores (PyTorch's threads); forked ranks use 1 thread each
two_cores = timed_steps({"1 process, 2 cores (threads)": (None, True)}, TIME_STEPS)
torch.set_num_threads(threads)
two_procs = launch(timed_steps, N, ddp_configs, TIME_STEPS)[0]
step_time = {k: t for k, (t, _) in {**one_core, **two_cores, **two_procs}.items()}
buckets = {k: b for k, (_, b) in two_procs.items()}
base = step_time["1 process, 1 core"]
steps_table = pd.DataFrame({"ms per step": {k: round(1000 * v, 1) for k, v in step_time.items()},
                            "speed-up over 1 core": {k: round(base / v, 2) for k, v in step_time.items()}})
print(steps_table.to_string())
ddp = step_time["DDP, buckets of 25 MB (default)"]
print(f"2 processes with DDP: {base / ddp:.2f} times the speed of 1 process on 1 core, "
      f"{step_time['1 process, 2 cores (threads)'] / ddp:.2f} times that of 1 process on both cores")


# %% [markdown]
# On a CPU, two processes compete with PyTorch's own threads for the same cores: the fair comparison for this
# machine is the row of one process on both cores. In the stored run two processes with DDP ran 1.71 times as
# fast as one process on one core, but only 1.10 times as fast as one process on both cores; without the
# all-reduce (`no_sync`) the two processes are faster still, and the gap between those two rows is what the
# communication costs. A third job on the machine slows one of the two ranks, and every all-reduce waits for the
# slower one: timed on a busy machine, two processes can come out slower than one. On GPUs each process has its own accelerator, and N of them do N
# times the arithmetic; what data parallelism then costs is the communication, measured next.

# %% [markdown]
# **The all-reduce against the ring formula.** Time `dist.all_reduce` of messages from a few kilobytes to
# 16 MiB on the two processes, fit the formula's two constants (latency $\alpha$ and bandwidth $\beta$) to the
# measurements by least squares (on relative errors), and compare each measurement with the formula.

# %% tags=["nbval-ignore-output"]
SIZES = [2**k for k in (10, 14, 16, 18, 20, 22)]  # floats: 4 KiB to 16 MiB


def all_reduce_times(sizes: list[int], repeats: int) -> dict:
    """Each rank: median seconds of one all_reduce of `n` float32 numbers, for each n."""
    out = {}
    for n in sizes:
        t, times = torch.ones(n), []
        for _ in range(repeats):
            t.fill_(1.0)
            dist.barrier()
            start = time.perf_counter()
            dist.all_reduce(t)
            times.append(time.perf_counter() - start)
        out[n] = statistics.median(times)
    return out


measured = launch(all_reduce_times, N, SIZES, pick(full=20, quick=2))[0]
sent = torch.tensor([2 * (N - 1) / N * 4 * n for n in SIZES], dtype=torch.float64)  # bytes each rank sends
secs = torch.tensor([measured[n] for n in SIZES], dtype=torch.float64)
A = torch.stack([torch.full_like(sent, 2 * (N - 1)), sent], dim=1)  # t = 2(N-1) alpha + sent / beta
# least squares on relative errors (each row divided by its time), so small messages count as much as large ones
alpha, inv_beta = torch.linalg.lstsq(A / secs[:, None], torch.ones_like(secs)[:, None]).solution.flatten().tolist()
beta = 1 / inv_beta


def ring_time(nbytes: float, messages: int = 1) -> float:
    """The ring formula with this machine's fitted constants: `messages` all-reduces of nbytes in all."""
    return messages * 2 * (N - 1) * alpha + 2 * (N - 1) / N * nbytes / beta


ring = pd.DataFrame({"KiB": [4 * n // 1024 for n in SIZES], "measured ms": (secs * 1e3).round(decimals=3).tolist(),
                     "formula ms": [round(1e3 * ring_time(4 * n), 3) for n in SIZES]})
ring["measured / formula"] = (ring["measured ms"] / ring["formula ms"]).round(2)
print(f"fitted: alpha = {alpha * 1e6:.1f} us per message, beta = {beta / 1e9:.2f} GB/s")
print(ring.to_string(index=False))


# %% [markdown]
# Where the last column departs from 1, the two-constant model misses something: fixed costs of a small message
# (Python, gloo's bookkeeping, waking the other process) that do not scale as one latency, or a bandwidth that
# depends on the size (caches). The formula is a model of the network, not of everything around it; on GPUs, NCCL's
# own tests report the same two numbers (latency, and "bus bandwidth" $= \frac{2(N-1)}{N} S / t$).

# %% [markdown]
# **Buckets.** The model's gradients are a few MiB. With buckets of $b$ bytes DDP sends about $4P / b$ messages
# (whole parameter tensors per bucket; DDP reports how many it all-reduced), so the formula predicts the
# communication of one step as that many latencies plus the bytes over the bandwidth. The measured cost is the step time of DDP
# minus that of the same processes without the all-reduce (`no_sync`); part of the communication hides behind the
# backward pass, so the measured cost can be lower than the formula.

# %% tags=["nbval-ignore-output"]
grad_bytes = 4 * P
rows = []
for label in ddp_configs:
    if label.startswith("2 processes"):
        continue
    messages = buckets[label]
    rows.append({"buckets": label, "all-reduces": messages,
                 "formula ms": round(1e3 * ring_time(grad_bytes, messages), 2),
                 "measured ms (DDP - no_sync)": round(1e3 * (step_time[label]
                                                             - step_time["2 processes, no_sync (no all-reduce)"]), 2)})
print(pd.DataFrame(rows).set_index("buckets").to_string())

# %% [markdown]
# **Each rank's optimizer state with FSDP.** After one AdamW step, add up the bytes of every tensor in the
# optimizer's state on each rank (under FSDP the moments are shards: the rank's local part) and compare with
# the prediction of lesson 10: two float32 moments per parameter, $8P$ bytes, plus one 4-byte step counter per
# parameter tensor; under FSDP $8P/N$ per rank (a tensor whose first dimension does not divide by $N$ is cut
# into slightly unequal parts, so the ranks differ by a few rows).

# %% tags=["nbval-ignore-output"]
def optimizer_state_bytes(strategy: str) -> dict:
    """Each rank: the bytes of its optimizer state after one step, its parameters' local numbers and tensors."""
    torch.manual_seed(0)  # FSDP broadcasts nothing: every rank builds the same weights
    model = wrap(GPT(cfg), strategy)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    train_lm(model, RandomWindows(train_data, block_size=cfg.context_len, batch_size=4), optimizer=opt, steps=1,
             progress=False)
    local = lambda t: t.to_local() if hasattr(t, "to_local") else t  # noqa: E731  (a DTensor's shard)
    state = sum(local(v).nbytes for s in opt.state.values() for v in s.values() if torch.is_tensor(v))
    return {"state": state, "tensors": len(opt.state)}


rows = []
for strategy in ("ddp", "fsdp"):
    for rank, got in enumerate(launch(optimizer_state_bytes, N, strategy)):
        shard = P if strategy == "ddp" else P / N
        predicted = adam_state_bytes(0, got["tensors"]) + 8 * shard
        rows.append({"strategy": strategy, "rank": rank, "predicted bytes": int(predicted),
                     "measured bytes": got["state"], "measured / predicted": round(got["state"] / predicted, 3)})
state_table = pd.DataFrame(rows).set_index(["strategy", "rank"])
print(state_table.to_string())


# %% [markdown]
# With FSDP each rank keeps half of Adam's moments (the ratio column against the prediction); the ranks differ by the
# rows of tensors whose first dimension is odd (the embedding's 65 rows split 33 and 32). The weights and gradients
# are sharded the same way; only the block being computed is whole, for the time of its forward or backward.

# %% [markdown]
# ## 6. Lesson 11's GPT on two processes: the same validation loss at the same tokens
#
# The same model, recipe and seed as lesson 11 (AdamW with decay on matrices, warm-up and cosine decay, clipping)
# for a short run, once on one process and once on two with DDP, both through `lib.train.train_lm` unchanged.
# Both draw the same global batches of 16 windows; on two processes each rank trains on 8 of them.

# %% tags=["nbval-ignore-output"]
GPT_STEPS = pick(full=150, quick=3)


def train_gpt(steps: int) -> dict:
    """Each rank: lesson 11's recipe on this process group; the losses, validation loss and time."""
    torch.manual_seed(0)
    model = wrap(GPT(cfg), "ddp")
    opt = torch.optim.AdamW(param_groups(model, 0.1), lr=2e-3, betas=(0.9, 0.99))
    sched = cosine_schedule(opt, warmup_steps=max(1, steps // 10), total_steps=steps)
    batches = RandomWindows(train_data, block_size=cfg.context_len, batch_size=16, seed=0)
    h = train_lm(model, batches, optimizer=opt, scheduler=sched, steps=steps, progress=False,
                 evaluate=lambda m: lm_loss(m, val_data, block_size=cfg.context_len, max_windows=pick(128, 4)))
    return {"loss": h.step_loss, "val": h.val_loss[-1], "tokens": h.tokens, "seconds": h.seconds}


one, two = launch(train_gpt, 1, GPT_STEPS)[0], launch(train_gpt, N, GPT_STEPS)[0]
gap = max(abs(a - b) for a, b in zip(one["loss"], two["loss"], strict=True))
print(f"{GPT_STEPS} steps, {one['tokens']:,} tokens on 1 process and {two['tokens']:,} on 2")
print(f"validation loss: 1 process {one['val']:.4f}, 2 processes {two['val']:.4f} "
      f"(difference {abs(one['val'] - two['val']):.1e}); largest step-loss difference {gap:.1e}")
print(f"training steps: 1 process {one['seconds']:.1f} s ({one['tokens'] / one['seconds']:,.0f} tokens/s), "
      f"2 processes {two['seconds']:.1f} s ({two['tokens'] / two['seconds']:,.0f} tokens/s)")


# %% [markdown]
# The two runs are one run: the same global batches, the same weights after every step up to rounding (the step
# losses differ in the last digits, and the differences grow slowly as rounding does in any long run), the same
# validation loss at the same number of tokens.

# %% tags=["nbval-ignore-output"]
fig, ax = plt.subplots(figsize=(6, 3.2))
_ = ax.plot(one["loss"], lw=2.5, alpha=0.5, label="1 process, batch 16")
_ = ax.plot(two["loss"], lw=0.8, label="2 processes, 8 each (DDP)")
_ = ax.set(xlabel="step", ylabel="training loss (nats)", title="The same run on one and on two processes")
_ = ax.legend()

# %% [markdown]
# ## 7. On paper: 8 GPUs in one machine, and 2 machines
#
# Predict a step of data-parallel training from three numbers: the FLOPs of a step (counted here by PyTorch's
# `FlopCounterMode` on the model itself, forward and backward, on the `meta` device so nothing is computed), the
# accelerator's speed, and the link's bandwidth for the all-reduce of float32 gradients ($4P$ bytes). Published
# figures for an NVIDIA H100 SXM (its data sheet): 989 TFLOP/s of dense bf16, of which a well-tuned run gets about
# 40 % (the *model FLOPs utilisation* of large runs); NVLink 4 between the 8 GPUs of one machine, 450 GB/s each way
# per GPU; between machines, one 400 Gb/s InfiniBand NDR link per GPU, 50 GB/s. On 2 machines the ring crosses
# the slow link, so it sets the pace. The step is at least the larger of compute and communication (perfect
# overlap) and at most their sum (none).

# %% tags=["nbval-ignore-output"]
PEAK, MFU = 989e12, 0.40  # H100 SXM dense bf16 FLOP/s, the share of it a good run uses
LINKS = {"8 GPUs, 1 machine (NVLink 450 GB/s)": (8, 450e9), "16 GPUs, 2 machines (NDR 50 GB/s)": (16, 50e9)}
gpt2 = GPTConfig(vocab_size=50257, context_len=1024, d_model=768, num_layers=12, num_heads=12, norm="layer",
                 ffn="mlp", activation="gelu_tanh", positional="learned", bias=True)
lesson11 = GPTConfig(vocab_size=65, context_len=128, d_model=128, num_layers=4, num_heads=4, n_kv_heads=2)


def step_flops(config: GPTConfig, batch: int) -> tuple[int, float]:
    """Parameters and the FLOPs of one forward and backward pass of `batch` full windows, counted on meta."""
    with torch.device("meta"):
        model = GPT(config)
        x = torch.randint(0, config.vocab_size, (batch, config.context_len))
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x).flatten(0, 1), x.flatten()).backward()
    return model.num_parameters(), counter.get_total_flops()


rows = []
for name, config, per_gpu in (("lesson 11's GPT", lesson11, 32), ("GPT-2 124M", gpt2, 16)):
    params, flops = step_flops(config, per_gpu)
    compute = flops / (PEAK * MFU)
    for link, (gpus, bw) in LINKS.items():
        comm = 2 * (gpus - 1) / gpus * 4 * params / bw
        tokens_even = comm * PEAK * MFU / (flops / (per_gpu * config.context_len))  # where compute = comm
        rows.append({"model": name, "setting": link, "params (M)": round(params / 1e6, 2),
                     "tokens/GPU": per_gpu * config.context_len, "TFLOP/GPU": round(flops / 1e12, 3),
                     "compute ms": round(compute * 1e3, 3), "all-reduce ms": round(comm * 1e3, 3),
                     "step ms (overlap..none)": f"{max(compute, comm) * 1e3:.2f}..{(compute + comm) * 1e3:.2f}",
                     "comm = compute at tokens/GPU": round(tokens_even)})
paper = pd.DataFrame(rows).set_index(["model", "setting"])
print(f"H100 at MFU {MFU:.0%}: {PEAK * MFU / 1e12:.0f} TFLOP/s per GPU")
print(paper.to_string())

# %% [markdown]
# Read the table by its last column: below that many tokens per GPU and step, the all-reduce takes longer than
# the arithmetic. For GPT-2 on one machine NVLink is so fast that communication hides easily behind any useful
# batch (the break-even is below one window of 1,024 tokens); across two machines the link is nine times slower and a GPU
# needs about nine times more tokens per step before the arithmetic covers the all-reduce: large batches, gradient accumulation (which all-reduces once per several
# micro-batches, `train_lm(..., accum_steps=k)`) and overlap are what keep multi-machine training efficient.
# Lesson 11's model is so small that nothing keeps a GPU busy: its step is tens of microseconds of arithmetic, the
# order of a few message latencies (not in this bandwidth-only model), so latency, not bandwidth, would dominate:
# data parallelism pays only for models whose step has work to share.

# %% [markdown]
# ## 8. Exercise 2: seeds in data parallelism (2 points, graded by hand)
#
# A data-parallel run seeds its random generators. Explain why every rank must build the model with the **same**
# seed (or receive rank 0's weights), but must use a **different** random stream for dropout and for choosing its
# examples; say what goes wrong in each case if this is not done, and how `lib.train.RandomWindows` gives each rank
# different examples while all ranks share one generator.

# %% [markdown] nbgrader={"grade": true, "grade_id": "ex2_written", "locked": false, "points": 2, "schema_version": 3, "solution": true, "task": false}
# ### BEGIN SOLUTION
# Data parallelism relies on every rank holding **the same weights** at every step: the averaged gradient is
# applied to each replica, and it equals the whole batch's gradient only at the weights where it was computed. If
# the ranks started from different initial weights, each rank's gradient would belong to a different model, the
# average to none of them, and the replicas would stay different forever (the all-reduce keeps their updates equal,
# not their weights): the run is not the one-process run and the model saved by rank 0 is not the one the others
# trained. DDP broadcasts rank 0's weights when it wraps the model, which hides a forgotten seed; FSDP does not
# broadcast, so there the same seed (or loading one checkpoint) is required.
#
# **Dropout and data must differ.** The point of N ranks is N different pieces of the batch. If every rank drew its
# examples with the same generator and kept all of them, all would compute the same gradient: N times the work for
# one rank's batch, an effective batch of $B/N$. With the same dropout stream on the same inputs the masks would be
# identical too. With different examples, sharing the dropout seed is less harmful but correlates the masks across
# ranks (the same units dropped on every rank in a step), so the averaged gradient is noisier than that of one
# process on the whole batch, which draws independent masks for every example: each rank should seed dropout with
# something like `seed + rank`.
#
# `RandomWindows` shares one generator on purpose: every rank draws the same $B$ start positions of the global
# batch, and rank $r$ keeps only the slice $[rB/N, (r+1)B/N)$. The slices are disjoint, so the ranks see different
# windows; together they see exactly the batch that one process would, which makes N processes and one give the
# same run and lets a checkpoint resume on any number of processes.
# ### END SOLUTION

# %% [markdown]
# ## Summary
#
# * Data parallelism: N replicas, each on $B/N$ examples, gradients averaged by an all-reduce; the same run as one
#   process with the whole batch (the course's tests prove it for DDP and FSDP, with gradient accumulation, and
#   that checkpoints move between 1 and N processes).
# * A ring all-reduce sends $2(N-1)/N$ of the gradient bytes per rank, almost independent of N; DDP sends it in
#   buckets that overlap with the backward pass; the time is $2(N-1)\alpha$ plus bytes over bandwidth.
# * Adam's state makes training cost 16 to 20 bytes per parameter; FSDP shards weights, gradients and optimizer
#   state, so each rank keeps $1/N$ of them for half as much communication again.
# * `lib.distributed` lets `lib.train` run unchanged under `torchrun` on N processes or machines: gloo on CPUs,
#   NCCL on GPUs, rank 0 alone prints and writes checkpoints.
