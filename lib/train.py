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

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from lib.runtime import check_positive_int, eval_mode
from lib.runtime import device as default_device

__all__ = [
    "History", "fit", "evaluate", "accuracy_count", "SequenceCrossEntropy", "transformer_lr", "warmup_schedule",
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
