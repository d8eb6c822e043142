"""lib.train: options observed through what they change, not through what is recorded about them.

Gradient clipping is checked by the update it makes (``tests/test_train.py`` sees the recorded
norms); a per-step scheduler over several epochs is stepped once per step and never also per
epoch; the warm-up schedule's ``scale`` multiplies every rate; ``evaluate`` and ``fit`` leave
each sub-module in the mode they found it; the sequence loss ignores the pad index it is given.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lib.train import SequenceCrossEntropy, evaluate, fit, transformer_lr, warmup_schedule


def _quiet(**kw):
    return dict(progress=False, verbose=False, device="cpu", **kw)


@pytest.mark.parametrize("grad_clip", [None, 0.5, 2.0, 1e6])
def test_grad_clip_changes_the_update_to_the_clipped_gradient(grad_clip):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    x, y = torch.randn(8, 3), 10 * torch.randn(8, 2)
    ref = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    ref.load_state_dict(model.state_dict())
    F.mse_loss(ref(x), y).backward()
    grads = [p.grad.clone() for p in ref.parameters()]
    norm = torch.sqrt(sum((g**2).sum() for g in grads))
    assert norm > 2.0  # large enough that 0.5 and 2.0 clip
    factor = 1.0 if grad_clip is None else min(1.0, grad_clip / (float(norm) + 1e-6))
    lr = 0.1
    h = fit(model, [(x, y)], epochs=1, optimizer=torch.optim.SGD(model.parameters(), lr=lr), loss_fn=nn.MSELoss(),
            grad_clip=grad_clip, **_quiet())
    assert h.grad_norm[0] == pytest.approx(float(norm), rel=1e-5)  # recorded before clipping
    for p, p0, g in zip(model.parameters(), ref.parameters(), grads, strict=True):
        torch.testing.assert_close(p.detach(), p0.detach() - lr * factor * g, atol=1e-6, rtol=1e-5)
    if grad_clip is not None and grad_clip < norm:  # the step taken has exactly the clipped length
        with torch.no_grad():
            step = torch.sqrt(sum(((p - p0) ** 2).sum() for p, p0 in zip(model.parameters(), ref.parameters(),
                                                                               strict=True)))
        assert float(step) == pytest.approx(lr * grad_clip, rel=1e-4)


def test_grad_clip_ignores_frozen_parameters():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 2))
    model[0].requires_grad_(False)
    x, y = torch.randn(8, 3), 10 * torch.randn(8, 2)
    frozen = model[0].weight.clone()
    ref = nn.Linear(3, 2)
    ref.load_state_dict(model[1].state_dict())
    F.mse_loss(ref(model[0](x)), y).backward()
    norm = torch.sqrt(ref.weight.grad.pow(2).sum() + ref.bias.grad.pow(2).sum())
    h = fit(model, [(x, y)], epochs=1, optimizer=torch.optim.SGD(model[1].parameters(), lr=0.1),
            loss_fn=nn.MSELoss(), grad_clip=1.0, **_quiet())
    assert h.grad_norm[0] == pytest.approx(float(norm), rel=1e-5)
    torch.testing.assert_close(model[0].weight, frozen)
    torch.testing.assert_close(model[1].weight.detach(), ref.weight.detach() - 0.1 * ref.weight.grad / float(norm),
                               atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("interval", ["step", "epoch"])
def test_scheduler_is_stepped_once_per_step_or_once_per_epoch_over_several_epochs(interval):
    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    loader = DataLoader(TensorDataset(torch.randn(6, 2), torch.randint(0, 2, (6,))), batch_size=2)  # 3 steps
    h = fit(model, loader, epochs=3, optimizer=opt, loss_fn=nn.CrossEntropyLoss(), scheduler=sched,
            scheduler_interval=interval, **_quiet())
    if interval == "step":
        assert h.lr == [0.5**i for i in range(9)]
        assert sched.last_epoch == 9
    else:
        assert h.lr == [1.0] * 3 + [0.5] * 3 + [0.25] * 3
        assert sched.last_epoch == 3
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5**sched.last_epoch)


@pytest.mark.parametrize("scale", [1.0, 2.0, 0.25])
def test_warmup_schedule_scale_multiplies_every_rate(scale):
    d, warm = 64, 10
    opt = torch.optim.Adam(nn.Linear(2, 2).parameters(), lr=0.5)
    sched = warmup_schedule(opt, d, warm, scale) if scale != 1.0 else warmup_schedule(opt, d, warm)
    rates = []
    for _ in range(30):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert rates == pytest.approx([scale * transformer_lr(s, d, warm) for s in range(1, 31)], rel=1e-12)
    assert max(rates) == pytest.approx(scale * (d * warm) ** -0.5)


def test_warmup_schedule_through_fit_with_several_epochs():
    """The documented way to use it: stepped every batch across epochs, never reset at an epoch boundary."""
    d, warm = 16, 4
    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=123.0)
    sched = warmup_schedule(opt, d, warm, scale=3.0)
    loader = DataLoader(TensorDataset(torch.randn(8, 2), torch.randint(0, 2, (8,))), batch_size=4)  # 2 steps
    h = fit(model, loader, epochs=4, optimizer=opt, loss_fn=nn.CrossEntropyLoss(), scheduler=sched,
            scheduler_interval="step", **_quiet())
    assert h.lr == pytest.approx([3.0 * transformer_lr(s, d, warm) for s in range(1, 9)], rel=1e-12)


def _mixed_modes(model: nn.Module) -> dict[str, bool]:
    return {name: m.training for name, m in model.named_modules()}


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(2, 8), nn.Dropout(0.5), nn.ReLU())
        self.head = nn.Sequential(nn.Linear(8, 2), nn.Dropout(0.5))
        self.seen: list[bool] = []

    def forward(self, x):
        self.seen.append(any(m.training for m in self.modules()))
        return self.head(self.backbone(x))


@pytest.mark.parametrize("start", ["train", "eval", "mixed"])
def test_evaluate_restores_every_modules_mode(start):
    net = _Net()
    if start == "eval":
        net.eval()
    elif start == "mixed":  # a frozen backbone kept in eval mode while the head trains
        net.train()
        net.backbone.eval()
    before = _mixed_modes(net)
    loader = [(torch.randn(4, 2), torch.randint(0, 2, (4,)))]
    evaluate(net, loader, nn.CrossEntropyLoss())
    assert net.seen == [False], "evaluate runs with every module in eval mode"
    assert _mixed_modes(net) == before


def test_evaluate_restores_the_mode_after_an_error():
    net = _Net().train()

    def broken(output, target):
        raise RuntimeError("bad loss")

    with pytest.raises(RuntimeError, match="bad loss"):
        evaluate(net, [(torch.randn(4, 2), torch.randint(0, 2, (4,)))], broken)
    assert all(m.training for m in net.modules())


def test_fit_validates_in_eval_mode_and_trains_in_training_mode():
    net = _Net().eval()
    loader = [(torch.randn(4, 2), torch.randint(0, 2, (4,)))] * 2
    fit(net, loader, loader, epochs=2, optimizer=torch.optim.SGD(net.parameters(), lr=0.1),
        loss_fn=nn.CrossEntropyLoss(), **_quiet())
    assert net.seen == [True, True, False, False] * 2


@pytest.mark.parametrize("pad", [0, 5])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_sequence_cross_entropy_ignores_its_pad_index_and_smooths_over_the_vocabulary(pad, smoothing):
    torch.manual_seed(2)
    B, T, V = 2, 4, 7
    logits = torch.randn(B, T, V)
    target = torch.randint(0, V, (B, T))
    target[target == pad] = (pad + 1) % V
    target[1, 2:] = pad
    loss = SequenceCrossEntropy(pad, smoothing)(logits, target) if smoothing else SequenceCrossEntropy(pad)(
        logits, target)
    logp = torch.log_softmax(logits, -1)
    real = target != pad
    nll = -logp.gather(-1, target[..., None]).squeeze(-1)
    uniform = -logp.mean(-1)
    expected = ((1 - smoothing) * nll + smoothing * uniform)[real].mean()
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    if smoothing == 0.0:
        assert not math.isclose(float(SequenceCrossEntropy(pad, 0.1)(logits, target)), float(loss), rel_tol=1e-4)
