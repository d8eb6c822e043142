"""A small, explicit training loop: ``fit`` and ``evaluate``.

Written to be read: one function per idea, no callbacks, no hidden state.
Batches are tuples ``(*inputs, target)``: the model is called as
``model(*inputs)`` and the loss as ``loss_fn(output, target)``, so a
``TensorDataset(x, y)`` and a ``TensorDataset(x, lengths, y)`` both work.

Accuracy is recorded when the output is (N, C) class scores and the target (N,)
class indices (``argmax`` of the scores) and for a single logit per example
(N,) or (N, 1) with float 0/1 targets (threshold at 0).

    history = fit(model, train_loader, test_loader, epochs=3,
                  optimizer=torch.optim.Adam(model.parameters(), 1e-3),
                  loss_fn=nn.CrossEntropyLoss())
    _ = plot_curves({"train": history.train_loss, "val": history.val_loss})
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from lib import distributed
from lib.runtime import check_positive_int, eval_mode
from lib.runtime import device as default_device

__all__ = [
    "History", "fit", "evaluate", "accuracy_count", "SequenceCrossEntropy", "transformer_lr", "warmup_schedule",
    "param_groups", "cosine_lr", "cosine_schedule", "clip_gradients", "RandomWindows", "lm_loss",
    "autocast", "rng_states", "set_rng_states", "save_checkpoint", "load_checkpoint", "LMHistory", "train_lm",
]


@dataclass
class History:
    """Per-epoch metrics as plain lists (ready for ``lib.plot.plot_curves``).

    Attributes:
        train_loss, train_acc: mean over the epoch's batches, weighted by batch size
            (accuracy is NaN when the task has no accuracy).
        val_loss, val_acc: ``evaluate`` on the validation loader after each epoch
            (empty without one).
        epoch_time: seconds per epoch (training and validation).
        step_loss: the loss of every training step (for stability plots).
        grad_norm: the total gradient norm of every step (before clipping).
        lr: the learning rate of every step.
    """

    train_loss: list[float] = field(default_factory=list)
    train_acc: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_acc: list[float] = field(default_factory=list)
    epoch_time: list[float] = field(default_factory=list)
    step_loss: list[float] = field(default_factory=list)
    grad_norm: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)

    @property
    def epochs(self) -> int:
        return len(self.train_loss)

    def curves(self, metric: str = "loss") -> dict[str, list[float]]:
        """``{"train": ..., "val": ...}`` for ``"loss"`` or ``"acc"``, for ``plot_curves``."""
        if metric not in ("loss", "acc"):
            raise ValueError(f"metric must be 'loss' or 'acc', got {metric!r}")
        out = {"train": getattr(self, f"train_{metric}")}
        if getattr(self, f"val_{metric}"):
            out["val"] = getattr(self, f"val_{metric}")
        return out

    def summary(self) -> str:
        """One line: the last epoch's numbers and the total time."""
        parts = [f"epochs {self.epochs}", f"train loss {self.train_loss[-1]:.4f}"]
        if not math.isnan(self.train_acc[-1]):
            parts.append(f"train acc {self.train_acc[-1]:.4f}")
        if self.val_loss:
            parts.append(f"val loss {self.val_loss[-1]:.4f}")
            if not math.isnan(self.val_acc[-1]):
                parts.append(f"val acc {self.val_acc[-1]:.4f}")
        parts.append(f"{sum(self.epoch_time):.1f} s")
        return ", ".join(parts)


def accuracy_count(output: Tensor, target: Tensor) -> int | None:
    """Number of correct predictions in a batch, or ``None`` if accuracy does not apply."""
    if output.dim() == 2 and output.shape[1] > 1 and target.dim() == 1 and not target.is_floating_point():
        return int((output.argmax(dim=1) == target).sum())  # (N, C) scores, (N,) classes
    one_per_row = output.dim() == 1 or (output.dim() == 2 and output.shape[1] == 1)
    if one_per_row and target.is_floating_point() and target.numel() == output.shape[0]:
        t = target.reshape(-1)
        if bool(((t == 0) | (t == 1)).all()):  # one logit per example, 0/1 targets
            return int(((output.reshape(-1) > 0).to(t.dtype) == t).sum())
    return None


def _split(batch: object, dev: torch.device) -> tuple[tuple[Tensor, ...], Tensor]:
    if not isinstance(batch, (tuple, list)) or len(batch) < 2:
        raise ValueError(
            f"each batch must be a tuple (*inputs, target) of at least 2 tensors, got {type(batch).__name__}"
            + (f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else "")
        )
    *inputs, target = (t.to(dev, non_blocking=True) for t in batch)
    return tuple(inputs), target


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: Iterable, loss_fn: Callable[[Tensor, Tensor], Tensor], device: torch.device | None = None
) -> tuple[float, float]:
    """Mean loss and accuracy of ``model`` over ``loader``, in eval mode.

    The loss is averaged over examples (each batch's mean loss weighted by its
    size, which equals the overall mean for ``reduction="mean"`` losses).  The
    model's previous training/eval mode is restored afterwards.

    Returns:
        ``(loss, accuracy)``; accuracy is NaN when it does not apply.
    """
    dev = device if device is not None else next(model.parameters()).device
    total_loss, correct, n, has_acc = 0.0, 0, 0, True
    with eval_mode(model):
        for batch in loader:
            inputs, target = _split(batch, dev)
            output = model(*inputs)
            total_loss += float(loss_fn(output, target)) * len(target)
            c = accuracy_count(output, target)
            has_acc = has_acc and c is not None
            correct += c or 0
            n += len(target)
    if n == 0:
        raise ValueError("evaluate: the loader yielded no examples")
    return total_loss / n, (correct / n if has_acc else math.nan)


def fit(
    model: nn.Module,
    train_loader: Iterable,
    val_loader: Iterable | None = None,
    *,
    epochs: int,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    device: torch.device | str | None = None,
    progress: bool = True,
    grad_clip: float | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    scheduler_interval: str = "epoch",
    seed: int | None = None,
    verbose: bool = True,
    max_steps: int | None = None,
    time_limit: float | None = None,
) -> History:
    """Train ``model`` for ``epochs`` epochs; return the per-epoch history.

    Each step: forward, loss, ``zero_grad``, backward, optional gradient
    clipping (total norm ``grad_clip``), optimizer step, optional scheduler step.

    Args:
        model: called as ``model(*inputs)`` on each batch ``(*inputs, target)``.
        train_loader, val_loader: iterables of batches (``DataLoader``s).
        epochs: number of passes over ``train_loader``.
        optimizer: built on ``model.parameters()``.
        loss_fn: ``loss_fn(output, target)`` -> scalar.
        device: where to train; default ``lib.runtime.device()``.  The model is moved there.
        progress: show a tqdm bar per epoch with the running loss.
        verbose: print one line per epoch (loss, accuracy, seconds).
        grad_clip: clip the total gradient norm to this value.
        scheduler: a learning-rate scheduler, stepped every epoch or every batch.
        scheduler_interval: ``"epoch"`` (most schedulers) or ``"step"`` (warm-up, OneCycle).
        seed: if given, ``torch.manual_seed(seed)`` first, so the shuffling and
            dropout of a CPU run repeat exactly.
        max_steps: stop after this many optimizer steps in all (the epoch in progress ends there).
        time_limit: stop after the step during which this many seconds of training have passed
            (a budget for shared machines; the number of steps then depends on the machine).

    Raises:
        ValueError: bad ``epochs``, ``grad_clip``, ``scheduler_interval``, batch
            format, or an empty training loader.
        TypeError: ``optimizer`` is not a ``torch.optim.Optimizer``, or ``loss_fn``
            is not callable.
    """
    check_positive_int(epochs=epochs)
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
    if grad_clip is not None and not grad_clip > 0:
        raise ValueError(f"grad_clip must be positive or None, got {grad_clip!r}")
    if scheduler_interval not in ("epoch", "step"):
        raise ValueError(f"scheduler_interval must be 'epoch' or 'step', got {scheduler_interval!r}")
    if max_steps is not None:
        check_positive_int(max_steps=max_steps)
    if time_limit is not None and not time_limit > 0:
        raise ValueError(f"time_limit must be positive seconds or None, got {time_limit!r}")
    from tqdm.auto import tqdm

    began = time.perf_counter()
    stop = False

    if seed is not None:
        torch.manual_seed(seed)
    dev = torch.device(device) if device is not None else default_device()
    model.to(dev)
    params = [p for p in model.parameters() if p.requires_grad]
    history = History()
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        model.train()
        total_loss, correct, n, has_acc = 0.0, 0, 0, True
        bar = tqdm(train_loader, desc=f"epoch {epoch}/{epochs}", disable=not progress, leave=False)
        for batch in bar:
            inputs, target = _split(batch, dev)
            output = model(*inputs)
            loss = loss_fn(output, target)
            history.lr.append(float(optimizer.param_groups[0]["lr"]))  # the rate this step uses
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip is not None else math.inf)
            optimizer.step()
            if scheduler is not None and scheduler_interval == "step":
                scheduler.step()
            loss_value = loss.item()
            history.step_loss.append(loss_value)
            history.grad_norm.append(float(norm))
            total_loss += loss_value * len(target)
            c = accuracy_count(output.detach(), target)
            has_acc = has_acc and c is not None
            correct += c or 0
            n += len(target)
            bar.set_postfix(loss=f"{total_loss / n:.4f}")
            if (max_steps is not None and len(history.step_loss) >= max_steps) or (
                time_limit is not None and time.perf_counter() - began >= time_limit
            ):
                stop = True
                break
        bar.close()
        if n == 0:
            raise ValueError("fit: the training loader yielded no examples")
        if scheduler is not None and scheduler_interval == "epoch":
            scheduler.step()
        history.train_loss.append(total_loss / n)
        history.train_acc.append(correct / n if has_acc else math.nan)
        if val_loader is not None:
            vl, va = evaluate(model, val_loader, loss_fn, dev)
            history.val_loss.append(vl)
            history.val_acc.append(va)
        history.epoch_time.append(time.perf_counter() - start)
        if verbose:
            line = f"epoch {epoch}/{epochs}: train loss {history.train_loss[-1]:.4f}"
            if has_acc:
                line += f", acc {history.train_acc[-1]:.4f}"
            if val_loader is not None:
                line += f"; val loss {history.val_loss[-1]:.4f}"
                if not math.isnan(history.val_acc[-1]):
                    line += f", acc {history.val_acc[-1]:.4f}"
            tqdm.write(line + f" ({history.epoch_time[-1]:.1f} s)")  # print() that keeps bars intact
        if stop:
            break
    return history


# ---------------------------------------------------------------------------
# Sequence-to-sequence training: label-smoothed loss and the paper's warm-up schedule
# ---------------------------------------------------------------------------


class SequenceCrossEntropy(nn.Module):
    """Token-level cross-entropy for (B, T, V) logits, padding ignored, optional label smoothing.

    A thin wrapper of ``nn.CrossEntropyLoss(label_smoothing=eps, ignore_index=pad)`` that moves
    the vocabulary axis where PyTorch wants it ((B, V, T)).  With smoothing eps the target
    distribution is (1 - eps) on the reference token plus eps / V on every token
    (Szegedy et al. 2016; Vaswani et al. 2017, section 5.4, use eps = 0.1).  The loss is the
    mean over the non-padding tokens of the batch.

    Shapes:
        logits (B, T, V), target (B, T) int64 -> scalar.
    """

    def __init__(self, pad: int, label_smoothing: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.pad = pad
        self.loss = nn.CrossEntropyLoss(ignore_index=pad, label_smoothing=label_smoothing)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        if logits.dim() != 3 or target.shape != logits.shape[:2]:
            raise ValueError(
                f"SequenceCrossEntropy expects logits (B, T, V) and target (B, T), got {tuple(logits.shape)} "
                f"and {tuple(target.shape)}"
            )
        return self.loss(logits.transpose(1, 2), target)  # (B, V, T) against (B, T)


def transformer_lr(step: int, d_model: int, warmup_steps: int) -> float:
    """Vaswani et al. (2017), section 5.3: d_model^-0.5 * min(step^-0.5, step * warmup_steps^-1.5).

    The rate grows linearly for ``warmup_steps`` steps, peaks at (d_model * warmup_steps)^-0.5,
    then decays as 1/sqrt(step).  ``step`` counts from 1.
    """
    if step < 1:
        raise ValueError(f"step counts from 1, got {step}")
    if warmup_steps < 1 or d_model < 1:
        raise ValueError(f"d_model and warmup_steps must be positive, got {d_model}, {warmup_steps}")
    return d_model**-0.5 * min(step**-0.5, step * warmup_steps**-1.5)


def warmup_schedule(
    optimizer: torch.optim.Optimizer, d_model: int, warmup_steps: int, scale: float = 1.0
) -> torch.optim.lr_scheduler.LambdaLR:
    """The paper's learning-rate schedule as a ``LambdaLR`` to step every batch (``scheduler_interval="step"``).

    The learning rate of step s (from 1) is ``scale * transformer_lr(s, d_model, warmup_steps)``,
    whatever ``lr`` the optimizer was built with (the paper's Adam has beta2 = 0.98, eps = 1e-9).
    """
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] = 1.0
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda i: scale * transformer_lr(i + 1, d_model, warmup_steps)
    )


# ---------------------------------------------------------------------------
# Language-model training (lesson 11): AdamW groups, cosine schedule, clipping,
# random windows over a token stream, checkpoints that resume exactly
# ---------------------------------------------------------------------------


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW parameter groups: weight decay on the matrices only (Loshchilov and Hutter 2019).

    Decay pulls weights towards zero; that regularises the weight matrices of Linear layers,
    but a norm's gain pulled to 0 (instead of its neutral 1), a bias or an embedding row of a
    rare token shrunk towards 0 only hurt (Devlin et al.'s BERT and most LLM recipes exclude
    them).  So: every parameter of an embedding or a norm (any ``nn.LayerNorm`` or module with
    "Norm" in its class name) and every bias go to the group without decay; a weight shared by
    an embedding and an output layer (tied) counts as the embedding's.

    Returns:
        ``[{"params": decayed, "weight_decay": weight_decay}, {"params": others, "weight_decay": 0.0}]``,
        each parameter once, in ``model.parameters()`` order; pass it to ``torch.optim.AdamW``.
    """
    if not weight_decay >= 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    no_decay: set[int] = set()
    for module in model.modules():
        whole = isinstance(module, (nn.Embedding, nn.LayerNorm)) or "Norm" in type(module).__name__
        for name, p in module.named_parameters(recurse=False):
            if whole or name == "bias" or name.endswith("_bias"):
                no_decay.add(id(p))
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if id(p) not in no_decay], "weight_decay": weight_decay},
        {"params": [p for p in params if id(p) in no_decay], "weight_decay": 0.0},
    ]


def cosine_lr(step: int, *, warmup_steps: int, total_steps: int, min_ratio: float = 0.1) -> float:
    """The learning-rate multiplier of step ``step`` (from 0): linear warm-up, then a cosine to ``min_ratio``.

    ``(step + 1) / (warmup_steps + 1)`` for the first ``warmup_steps`` steps, then
    ``min_ratio + (1 - min_ratio) * (1 + cos(pi * progress)) / 2`` with ``progress`` going from 0 to 1
    over the remaining steps, and ``min_ratio`` after ``total_steps`` (Loshchilov and Hutter 2017's
    SGDR without restarts; nanoGPT's ``get_lr`` with ``min_lr = min_ratio * lr``).
    """
    if warmup_steps < 0 or total_steps < 1 or warmup_steps > total_steps:
        raise ValueError(f"need 0 <= warmup_steps <= total_steps and total_steps >= 1, got warmup_steps={warmup_steps}, "
                         f"total_steps={total_steps}")
    if not 0.0 <= min_ratio <= 1.0:
        raise ValueError(f"min_ratio must be in [0, 1], got {min_ratio}")
    if step < 0:
        raise ValueError(f"step counts from 0, got {step}")
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    if step >= total_steps:
        return min_ratio
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)  # 0 .. 1
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def cosine_schedule(optimizer: torch.optim.Optimizer, *, warmup_steps: int, total_steps: int,
                    min_ratio: float = 0.1) -> torch.optim.lr_scheduler.LambdaLR:
    """``cosine_lr`` as a ``LambdaLR`` to step after every optimizer step: each group's lr times the multiplier."""
    cosine_lr(0, warmup_steps=warmup_steps, total_steps=total_steps, min_ratio=min_ratio)  # checks the arguments
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: cosine_lr(s, warmup_steps=warmup_steps, total_steps=total_steps, min_ratio=min_ratio))


def clip_gradients(parameters: Iterable[nn.Parameter], max_norm: float) -> Tensor:
    """Scale all gradients together so that their total L2 norm is at most ``max_norm``; return the norm before.

    The global norm ``sqrt(sum_p ||g_p||²)`` over every gradient (Pascanu et al. 2013): if it exceeds
    ``max_norm`` every gradient is multiplied by ``max_norm / norm``, so the update keeps its direction
    and only its length is capped.  What ``torch.nn.utils.clip_grad_norm_`` computes (it adds 1e-6 to
    the norm in the ratio; so does this).
    """
    if not max_norm > 0:
        raise ValueError(f"max_norm must be positive, got {max_norm!r}")
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.tensor(0.0)
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.detach().float()) for g in grads]))
    scale = (max_norm / (norm + 1e-6)).clamp(max=1.0)  # 1 when the norm is already small enough
    for g in grads:
        g.detach().mul_(scale.to(g.device, g.dtype))
    return norm


class RandomWindows:
    """Batches of random windows of a token stream: inputs and the same windows shifted by one.

    Each batch picks ``batch_size`` start positions uniformly from a seeded generator and
    returns ``x = tokens[s : s + T]`` and ``y = tokens[s + 1 : s + T + 1]`` (nanoGPT's
    ``get_batch``): every position of a window is a next-token example.  The generator's state
    travels in checkpoints (``state_dict``), so a resumed run draws the same batches.

    On N processes (``lib.distributed``) every rank draws the same ``batch_size`` starts from the same
    generator and keeps its own slice of B / N windows: together the ranks train on exactly the
    batch one process would, so N processes and one give the same run, and a checkpoint resumes on
    any number of processes (a per-rank seed would give independent batches, equally valid but not
    comparable with one process).

    Args:
        tokens: 1-D integer tensor, the whole stream (e.g. the training text's ids).
        block_size: T, the window length (the model's context).
        batch_size: B, windows per batch, all ranks together (the global batch).
        seed: the generator's seed.
        rank, world_size: this process's slice; default the current process group's (0 of 1 without one).

    Shapes:
        ``next(batches)`` -> x (B / N, T), y (B / N, T) int64.

    Raises:
        ValueError: ``batch_size`` is not divisible by the number of processes.
    """

    def __init__(self, tokens: Tensor, *, block_size: int, batch_size: int, seed: int = 0, rank: int | None = None,
                 world_size: int | None = None) -> None:
        if tokens.dim() != 1 or tokens.is_floating_point():
            raise ValueError(f"tokens must be a 1-D integer tensor, got {tokens.dtype} {tuple(tokens.shape)}")
        if block_size < 1 or batch_size < 1:
            raise ValueError(f"block_size and batch_size must be positive, got {block_size}, {batch_size}")
        if tokens.numel() < block_size + 1:
            raise ValueError(f"a window needs block_size + 1 = {block_size + 1} tokens, the stream has {tokens.numel()}")
        self.tokens, self.block_size, self.batch_size = tokens.long(), block_size, batch_size
        ctx = distributed.context()
        self.rank = ctx.rank if rank is None else rank
        self.world_size = ctx.world_size if world_size is None else world_size
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank must be in [0, world_size={self.world_size}), got {self.rank}")
        self.local_batch = distributed.per_rank(batch_size, self.world_size)
        self.generator = torch.Generator().manual_seed(seed)

    def __iter__(self) -> RandomWindows:
        return self

    def __next__(self) -> tuple[Tensor, Tensor]:
        T = self.block_size
        starts = torch.randint(self.tokens.numel() - T, (self.batch_size,), generator=self.generator)  # (B,)
        starts = starts[self.rank * self.local_batch : (self.rank + 1) * self.local_batch]  # (B / N,) this rank's
        idx = starts[:, None] + torch.arange(T + 1)  # (B / N, T + 1)
        windows = self.tokens[idx]  # (B / N, T + 1)
        return windows[:, :-1], windows[:, 1:]  # (B / N, T), (B / N, T)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


@torch.no_grad()
def lm_loss(model: nn.Module, tokens: Tensor, *, block_size: int, batch_size: int = 64,
            max_windows: int | None = None) -> float:
    """Mean next-token cross-entropy (nats) of ``model`` over consecutive windows of ``tokens``, in eval mode.

    The stream is cut into non-overlapping windows of ``block_size + 1`` tokens (the last
    partial one dropped), each scored as ``model(x)`` against ``y``; deterministic, unlike
    nanoGPT's ``estimate_loss`` over random windows, which estimates the same quantity.
    ``max_windows`` keeps the first windows only (quick mode).
    """
    T = block_size
    n = (tokens.numel() - 1) // T
    if n < 1:
        raise ValueError(f"lm_loss needs at least block_size + 1 = {T + 1} tokens, got {tokens.numel()}")
    if max_windows is not None:
        n = min(n, max_windows)
    dev = next(model.parameters()).device
    x_all = tokens[: n * T].view(n, T)  # (N, T)
    y_all = tokens[1 : n * T + 1].view(n, T)  # (N, T)
    total = 0.0
    with eval_mode(model):
        for i in range(0, n, batch_size):
            x, y = x_all[i : i + batch_size].to(dev), y_all[i : i + batch_size].to(dev)
            logits = model(x)  # (b, T, V)
            total += float(nn.functional.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), reduction="sum"))
    return total / (n * T)


def autocast(dev: torch.device | str) -> contextlib.AbstractContextManager:
    """bf16 autocast on a CUDA device that supports it, else a context that changes nothing.

    Mixed precision runs the matrix products in bfloat16 (half the bytes, tensor cores) and keeps
    the weights, the optimizer and the reductions in float32; bfloat16 has float32's exponent range,
    so no loss scaling is needed.  On the CPU it is usually slower than float32, so it stays off.
    """
    dev = torch.device(dev)
    if dev.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def rng_states() -> dict:
    """Every random generator's state: Python's, NumPy's, torch's CPU one and every CUDA device's."""
    import random

    import numpy as np

    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_states(states: dict) -> None:
    """Restore what ``rng_states`` returned."""
    import random

    import numpy as np

    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save_checkpoint(path: str | Path, *, model: nn.Module, optimizer: torch.optim.Optimizer, step: int,
                    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
                    batches: RandomWindows | None = None, extra: dict | None = None) -> None:
    """Write everything a run needs to go on exactly: weights, optimizer moments, schedule, step, every RNG state.

    The file is written next to ``path`` and renamed over it, so a crash mid-write leaves the
    previous checkpoint intact.  ``batches`` is the sampler whose generator state is saved.

    The weights and optimizer state are saved whole and keyed by parameter name
    (``lib.distributed.full_state_dict``), so a checkpoint written by one process, by DDP or by FSDP on
    N processes loads on any number of them.  On N processes every rank calls this (the shards are
    gathered, each rank's RNG states recorded) and rank 0 alone writes.
    """
    path = Path(path)
    model_state, optimizer_state = distributed.full_state_dict(model, optimizer)
    rng = rng_states()
    rng_per_rank = [rng]
    if distributed.context().distributed:
        rng_per_rank = [None] * distributed.context().world_size
        torch.distributed.all_gather_object(rng_per_rank, rng)
    if distributed.context().is_main:
        state = {
            "model": model_state,
            "optimizer": optimizer_state,
            "scheduler": None if scheduler is None else scheduler.state_dict(),
            "batches": None if batches is None else batches.state_dict(),
            "step": step,
            "rng": rng,
            "rng_per_rank": rng_per_rank,
            "extra": extra or {},
        }
        tmp = path.with_name(path.name + ".tmp")
        torch.save(state, tmp)
        tmp.replace(path)
    if distributed.context().distributed:
        torch.distributed.barrier()  # the file exists for every rank once this returns


def load_checkpoint(path: str | Path, *, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
                    batches: RandomWindows | None = None) -> dict:
    """Restore what ``save_checkpoint`` wrote into these objects (and the global RNGs); return the checkpoint.

    The returned dict holds ``step`` (the number of steps done) and ``extra``.  Build the
    objects as for a fresh run, then load: the run goes on as if it had never stopped.  On N
    processes every rank loads (an FSDP rank keeps its shard) and restores the RNG states the same
    rank saved; a rank the saving run did not have keeps its own.
    """
    state = torch.load(path, map_location="cpu", weights_only=False)
    distributed.load_full_state_dict(model, optimizer, state["model"], state["optimizer"])
    if scheduler is not None:
        if state["scheduler"] is None:
            raise ValueError(f"{path} holds no scheduler state, but a scheduler was given")
        scheduler.load_state_dict(state["scheduler"])
    if batches is not None:
        if state["batches"] is None:
            raise ValueError(f"{path} holds no batch sampler state, but batches were given")
        batches.load_state_dict(state["batches"])
    rank, saved = distributed.context().rank, state.get("rng_per_rank") or [state["rng"]]
    if rank < len(saved):
        set_rng_states(saved[rank])
    return state


@dataclass
class LMHistory:
    """What ``train_lm`` records.

    Attributes:
        step_loss: the training loss of every step.
        lr: the first group's learning rate of every step.
        grad_norm: the gradient norm of every step (before clipping).
        eval_steps, val_loss: the step after which each evaluation ran and its loss.
        seconds: training time (evaluations excluded); tokens: tokens trained on.
    """

    step_loss: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    grad_norm: list[float] = field(default_factory=list)
    eval_steps: list[int] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    seconds: float = 0.0
    tokens: int = 0

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else math.nan


def train_lm(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    *,
    optimizer: torch.optim.Optimizer,
    steps: int,
    start_step: int = 0,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    grad_clip: float | None = 1.0,
    evaluate: Callable[[nn.Module], float] | None = None,
    eval_every: int | None = None,
    progress: bool = True,
    history: LMHistory | None = None,
    accum_steps: int = 1,
) -> LMHistory:
    """Train a language model ``model(x) -> logits (B, T, V)`` on next-token cross-entropy, step by step.

    Step s (from ``start_step`` to ``steps - 1``): ``accum_steps`` micro-batches, each a forward under
    ``autocast``, its loss divided by ``accum_steps`` and a backward (the gradients add up to those of
    the mean loss over all of them), then ``clip_gradients``, optimizer step, scheduler step.
    ``evaluate(model)`` runs after every ``eval_every`` steps and after the last (its time is not
    counted as training).  To resume, load a checkpoint into the same objects and pass its ``step`` as
    ``start_step``.

    On N processes (``lib.distributed``: the model wrapped by ``wrap``, the batches sharded by rank)
    the loop is the same: the gradients are averaged across ranks during the last micro-batch's
    backward only (``no_sync`` on the inner ones), the recorded loss is the mean over all ranks,
    ``evaluate`` runs on every rank (on the unwrapped model) and its mean is recorded, ``tokens``
    counts every rank's, and only rank 0 shows progress.
    """
    if steps < 1 or not 0 <= start_step <= steps:
        raise ValueError(f"need steps >= 1 and 0 <= start_step <= steps, got steps={steps}, start_step={start_step}")
    if eval_every is not None and (evaluate is None or eval_every < 1):
        raise ValueError("eval_every needs an evaluate function and a positive number of steps")
    check_positive_int(accum_steps=accum_steps)
    from tqdm.auto import tqdm

    history = history if history is not None else LMHistory()
    ctx = distributed.context()
    dev = next(model.parameters()).device
    params = [p for p in model.parameters() if p.requires_grad]
    sharded = distributed.is_sharded(model)
    model.train()
    it = iter(batches)
    bar = tqdm(range(start_step, steps), desc="steps", disable=not progress or not ctx.is_main, leave=False)
    for step in bar:
        began = time.perf_counter()
        history.lr.append(float(optimizer.param_groups[0]["lr"]))
        optimizer.zero_grad(set_to_none=True)
        step_loss = 0.0
        for micro in range(accum_steps):
            x, y = (t.to(dev, non_blocking=True) for t in next(it))  # (B, T), (B, T)
            with distributed.no_sync(model, skip=micro < accum_steps - 1):  # average across ranks once, at the end
                with autocast(dev):
                    logits = model(x)  # (B, T, V)
                loss = nn.functional.cross_entropy(logits.flatten(0, 1).float(), y.flatten())
                (loss / accum_steps).backward()
            step_loss += loss.item() / accum_steps
            history.tokens += y.numel() * ctx.world_size
        if grad_clip is None:
            norm = torch.nan
        elif sharded:  # FSDP: the gradients are DTensor shards; torch's clip takes the norm over all of them
            norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
            norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
        else:
            norm = clip_gradients(params, grad_clip)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        history.step_loss.append(distributed.all_reduce_mean(step_loss))
        history.grad_norm.append(float(norm))
        history.seconds += time.perf_counter() - began
        bar.set_postfix(loss=f"{history.step_loss[-1]:.3f}")
        done = step + 1
        if evaluate is not None and ((eval_every is not None and done % eval_every == 0) or done == steps):
            history.eval_steps.append(done)
            history.val_loss.append(distributed.all_reduce_mean(float(evaluate(distributed.unwrap(model)))))
            model.train()
    bar.close()
    return history
