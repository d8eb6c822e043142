"""lib.distributed and lib.train on two CPU processes (gloo): equal to one process, resumable across world sizes, and
failing cleanly.

The processes are started with ``lib.distributed.launch`` (fork: the test's functions run as they are) and, once, with
the ``torchrun`` command line.  Tolerances: fp32 on the CPU; two processes sum two half-batch gradients where one
process sums the whole batch at once, so the results differ by rounding only (about 1e-7 relative per step, which
AdamW's normalisation can raise on near-zero gradients): measured 2e-7 after 5 steps, asserted below 2e-6.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from functools import partial
from pathlib import Path

import pytest
import torch

from lib import distributed
from lib.distributed import RankFailed, launch

pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="this PyTorch build has no torch.distributed with gloo")

STREAM = torch.randint(0, 11, (600,), generator=torch.Generator().manual_seed(1))
BATCH, STEPS, ATOL = 8, 5, 2e-6


def _model():
    from lib.gpt import GPT, GPTConfig

    torch.manual_seed(0)  # the same initial weights on every rank (FSDP broadcasts nothing)
    return GPT(GPTConfig(vocab_size=11, context_len=8, d_model=16, num_layers=2, num_heads=2))


def _build(strategy: str, steps: int):
    from lib.train import RandomWindows, cosine_schedule, param_groups

    model = distributed.wrap(_model(), strategy)
    opt = torch.optim.AdamW(param_groups(model, 0.1), lr=1e-2)
    sched = cosine_schedule(opt, warmup_steps=2, total_steps=steps)
    return model, opt, sched, RandomWindows(STREAM, block_size=8, batch_size=BATCH, seed=3)


def _micro(batches, k: int):
    """Each batch of the sampler cut into k micro-batches (gradient accumulation over them)."""
    for x, y in batches:
        yield from zip(x.chunk(k), y.chunk(k), strict=True)


def _train(strategy: str = "ddp", accum: int = 1, steps: int = STEPS, *, save_at: int | None = None,
           resume: Path | None = None, path: Path | None = None) -> dict:
    """Train the tiny GPT (in this process, or as one rank); return rank 0's full weights and the losses."""
    from lib.train import load_checkpoint, save_checkpoint, train_lm

    model, opt, sched, batches = _build(strategy, steps)
    start = 0
    if resume is not None:
        start = load_checkpoint(resume, model=model, optimizer=opt, scheduler=sched, batches=batches)["step"]
    stop = save_at if save_at is not None else steps
    h = train_lm(model, _micro(batches, accum), optimizer=opt, scheduler=sched, steps=stop, start_step=start,
                 accum_steps=accum, progress=False)
    if save_at is not None:
        save_checkpoint(path, model=model, optimizer=opt, scheduler=sched, batches=batches, step=save_at)
    weights, _ = distributed.full_state_dict(model)
    return {"weights": weights, "loss": h.step_loss, "tokens": h.tokens, "world": distributed.context().world_size}


@pytest.fixture(scope="module")
def one_process() -> dict:
    return _train()


def _assert_same_run(got: dict, ref: dict, what: str, *, losses: bool = True) -> None:
    assert got["weights"].keys() == ref["weights"].keys(), what
    worst = max((got["weights"][k] - ref["weights"][k]).abs().max().item() for k in ref["weights"])
    assert worst < ATOL, f"{what}: parameters differ by {worst:.2e} after {STEPS} AdamW steps"
    if losses:
        assert got["loss"] == pytest.approx(ref["loss"], abs=ATOL), what


@pytest.mark.parametrize(("strategy", "accum"), [("ddp", 1), ("ddp", 2), ("fsdp", 1), ("fsdp", 2)])
def test_two_processes_of_batch_b_equal_one_process_of_batch_2b(one_process, strategy, accum):
    ranks = launch(_train, 2, strategy, accum, timeout=300)
    assert [r["world"] for r in ranks] == [2, 2]
    assert ranks[0]["tokens"] == one_process["tokens"] == STEPS * BATCH * 8  # every rank's tokens counted
    _assert_same_run(ranks[0], one_process, f"2 processes ({strategy}, {accum} micro-batches)")
    assert ranks[1]["loss"] == ranks[0]["loss"]  # the reported loss is the all-reduced one on every rank


def test_accumulating_two_micro_batches_equals_one_batch_of_twice_the_size(one_process):
    _assert_same_run(_train(accum=2), one_process, "2 micro-batches of 4 in one process")
    other = _train(steps=STEPS + 1)  # the check can fail: another schedule changes the parameters
    assert max((other["weights"][k] - one_process["weights"][k]).abs().max().item() for k in other["weights"]) > 1e-3


def test_a_checkpoint_from_two_processes_resumes_in_one_and_the_reverse(tmp_path, one_process):
    ddp = tmp_path / "ddp.pt"
    first = launch(partial(_train, save_at=2, path=ddp), 2, timeout=300)[0]
    rest = _train(resume=ddp)
    assert first["loss"] + rest["loss"] == pytest.approx(one_process["loss"], abs=ATOL)
    _assert_same_run(rest, one_process, "2 processes (DDP) for 2 steps, then 1 process", losses=False)

    single = tmp_path / "single.pt"
    first = _train(save_at=3, path=single)
    rest = launch(partial(_train, "fsdp", resume=single), 2, timeout=300)[0]
    assert first["loss"] + rest["loss"] == pytest.approx(one_process["loss"], abs=ATOL)
    _assert_same_run(rest, one_process, "1 process for 3 steps, then 2 processes (FSDP)", losses=False)


def _dies(pid_dir: Path) -> None:
    rank = distributed.context().rank
    (pid_dir / str(os.getpid())).touch()
    if rank == 1:
        raise ValueError("rank 1 ran out of data")
    torch.distributed.all_reduce(torch.ones(1))  # rank 0 waits for rank 1 here, forever without the launcher


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_a_rank_that_raises_stops_the_others_with_its_error(tmp_path):
    with pytest.raises(RankFailed, match="rank 1 ran out of data") as info:
        launch(_dies, 2, tmp_path, timeout=300)
    assert info.value.rank == 1 and info.value.error == "ValueError"
    assert str(info.value).startswith("rank 1 of 2 raised ValueError: rank 1 ran out of data")
    pids = [int(p.name) for p in tmp_path.iterdir()]
    assert len(pids) == 2 and not any(_alive(p) for p in pids), "a rank was left running"


def _vanishes() -> None:
    if distributed.context().rank == 1:
        os._exit(3)  # no exception, no message: the process just ends
    torch.distributed.all_reduce(torch.ones(1))


def test_a_rank_that_dies_without_an_error_is_named_too():
    with pytest.raises(RankFailed, match=r"rank 1 of 2 died \(exit code 3\)") as info:
        launch(_vanishes, 2, timeout=300)
    assert info.value.rank == 1 and info.value.error == ""


SCRIPT = """
import os, sys, torch
from lib import distributed
from lib.train import RandomWindows, train_lm
from lib.gpt import GPT, GPTConfig

ctx = distributed.setup()
(__import__("pathlib").Path(sys.argv[1]) / str(os.getpid())).touch()
torch.manual_seed(0)
model = distributed.wrap(GPT(GPTConfig(vocab_size=11, context_len=8, d_model=16, num_layers=1, num_heads=2)))
batches = RandomWindows(torch.arange(200) % 11, block_size=8, batch_size=int(sys.argv[2]))
if ctx.rank == 1 and sys.argv[3] == "fail":
    raise ValueError("rank 1 found a corrupt shard")
h = train_lm(model, batches, optimizer=torch.optim.AdamW(model.parameters()), steps=2, progress=False)
distributed.print0(f"rank {ctx.rank} of {ctx.world_size} on {ctx.backend}: loss {h.step_loss[-1]:.3f}")
distributed.teardown()
"""


def _torchrun(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(SCRIPT))
    env = {**os.environ, "PYTHONPATH": str(Path(distributed.__file__).parents[1]), "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script), str(tmp_path), *args], capture_output=True, text=True, env=env, timeout=300)


def test_torchrun_runs_the_loop_and_stops_every_rank_when_one_fails(tmp_path):
    ok = _torchrun(tmp_path, "4", "ok")
    assert ok.returncode == 0, ok.stderr[-3000:]
    lines = [line for line in ok.stdout.splitlines() if line.startswith("rank")]
    assert len(lines) == 1 and lines[0].startswith("rank 0 of 2 on gloo"), ok.stdout  # rank 0 alone prints

    for p in tmp_path.iterdir():
        p.unlink() if p.name.isdigit() else None
    failed = _torchrun(tmp_path, "4", "fail")
    assert failed.returncode != 0 and "rank 1 found a corrupt shard" in failed.stderr
    pids = [int(p.name) for p in tmp_path.iterdir() if p.name.isdigit()]
    assert len(pids) == 2 and not any(_alive(p) for p in pids), "a rank was left running"


def test_errors_name_the_problem(monkeypatch):
    from lib.train import RandomWindows

    with pytest.raises(ValueError, match="batch of 5 does not split over 2 processes"):
        RandomWindows(STREAM, block_size=4, batch_size=5, rank=0, world_size=2)
    with pytest.raises(ValueError, match="rank must be in"):
        RandomWindows(STREAM, block_size=4, batch_size=4, rank=2, world_size=2)
    monkeypatch.setattr(torch.distributed, "is_nccl_available", lambda: False)
    with pytest.raises(RuntimeError, match="NCCL backend, which this PyTorch build lacks"):
        distributed.backend_for("cuda")
    assert distributed.backend_for("cpu") == "gloo"
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_PORT", raising=False)
    with pytest.raises(RuntimeError, match="MASTER_PORT"):
        distributed.setup()
    with pytest.raises(ValueError, match="strategy"):
        distributed.wrap(_model(), "zero")


def test_one_process_changes_nothing():
    model = _model()
    assert distributed.wrap(model, "ddp") is model and distributed.unwrap(model) is model
    assert distributed.context().world_size == 1 and distributed.all_reduce_mean(torch.tensor(2.5)) == 2.5
    with distributed.no_sync(model):
        pass


def test_the_windows_of_all_ranks_make_the_one_process_batch():
    from lib.train import RandomWindows

    whole = next(RandomWindows(STREAM, block_size=8, batch_size=6, seed=5))[0]
    parts = [next(RandomWindows(STREAM, block_size=8, batch_size=6, seed=5, rank=r, world_size=3))[0] for r in range(3)]
    assert torch.equal(torch.cat(parts), whole)
