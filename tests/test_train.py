"""lib.train: fit reduces the loss, records history, repeats exactly; evaluate is right."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lib.train import History, accuracy_count, evaluate, fit


def separable(n: int = 128, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long()
    return TensorDataset(x, y)


def setup(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 2))
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    return model, opt


def loaders():
    train = DataLoader(separable(128, 0), batch_size=16, shuffle=True)
    val = DataLoader(separable(64, 1), batch_size=32)
    return train, val


def test_fit_reduces_loss_and_learns_a_separable_problem():
    model, opt = setup()
    train, val = loaders()
    h = fit(model, train, val, epochs=5, optimizer=opt, loss_fn=nn.CrossEntropyLoss(), device="cpu", progress=False)
    assert h.train_loss[-1] < 0.5 * h.train_loss[0]
    assert h.val_acc[-1] >= 0.9
    assert h.epochs == 5
    for name in ("train_loss", "train_acc", "val_loss", "val_acc", "epoch_time"):
        assert len(getattr(h, name)) == 5, name
    assert len(h.step_loss) == len(h.grad_norm) == len(h.lr) == 5 * len(train)
    assert set(h.curves("loss")) == {"train", "val"} and "epochs 5" in h.summary()


def test_history_without_validation():
    model, opt = setup()
    train, _ = loaders()
    h = fit(model, train, epochs=2, optimizer=opt, loss_fn=nn.CrossEntropyLoss(), device="cpu", progress=False)
    assert h.val_loss == [] and h.val_acc == [] and list(h.curves("acc")) == ["train"]
    with pytest.raises(ValueError, match="metric"):
        h.curves("f1")


def test_fit_is_deterministic_on_cpu_with_a_seed():
    runs = []
    for _ in range(2):
        model, opt = setup()
        train, _ = loaders()
        h = fit(model, train, epochs=2, optimizer=opt, loss_fn=nn.CrossEntropyLoss(), device="cpu",
                progress=False, seed=123)
        runs.append((h.step_loss, [p.detach().clone() for p in model.parameters()]))
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(a, b) for a, b in zip(runs[0][1], runs[1][1], strict=True))


def test_evaluate_matches_a_manual_computation():
    model, _ = setup()
    model.train()
    ds = separable(50, 2)
    loss_fn = nn.CrossEntropyLoss()
    loss, acc = evaluate(model, DataLoader(ds, batch_size=7), loss_fn)  # uneven last batch
    model.eval()
    with torch.no_grad():
        out = model(ds.tensors[0])
    assert math.isclose(loss, float(loss_fn(out, ds.tensors[1])), rel_tol=1e-5)
    assert math.isclose(acc, float((out.argmax(1) == ds.tensors[1]).float().mean()), rel_tol=1e-6)
    assert model.training is False  # restored to what it was (eval here)
    model.train()
    evaluate(model, DataLoader(ds, batch_size=7), loss_fn)
    assert model.training is True


def test_multiple_inputs_and_binary_logits():
    class TwoInputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(2, 1)

        def forward(self, x, scale):
            return self.lin(x).squeeze(-1) * scale

    x = torch.randn(20, 2)
    y = (x[:, 0] > 0).float()
    ds = TensorDataset(x, torch.ones(20), y)
    loss, acc = evaluate(TwoInputs(), DataLoader(ds, batch_size=5), nn.BCEWithLogitsLoss())
    assert 0 <= acc <= 1 and loss > 0


def test_accuracy_count():
    assert accuracy_count(torch.tensor([[2.0, 1.0], [0.0, 3.0]]), torch.tensor([0, 0])) == 1
    assert accuracy_count(torch.tensor([1.0, -1.0]), torch.tensor([1.0, 1.0])) == 1
    assert accuracy_count(torch.randn(3, 4), torch.randn(3, 4)) is None  # regression: no accuracy


def test_regression_history_has_nan_accuracy():
    torch.manual_seed(0)
    x = torch.randn(32, 3)
    ds = TensorDataset(x, x.sum(1, keepdim=True))
    model = nn.Linear(3, 1)
    h = fit(model, DataLoader(ds, batch_size=8), DataLoader(ds, batch_size=8), epochs=2,
            optimizer=torch.optim.SGD(model.parameters(), lr=0.1), loss_fn=nn.MSELoss(), device="cpu",
            progress=False)
    assert math.isnan(h.train_acc[0]) and math.isnan(h.val_acc[0])
    assert h.train_loss[1] < h.train_loss[0]


def test_grad_clip_and_step_scheduler():
    model, opt = setup()
    train, _ = loaders()
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / 8))
    h = fit(model, train, epochs=1, optimizer=opt, loss_fn=nn.CrossEntropyLoss(), device="cpu",
            progress=False, grad_clip=0.5, scheduler=sched, scheduler_interval="step")
    assert h.lr[0] == pytest.approx(0.05 / 8) and h.lr[-1] == pytest.approx(0.05)
    assert len(h.grad_norm) == len(train)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"epochs": 0}, ValueError, "epochs"),
        ({"epochs": 1.5}, TypeError, "epochs"),
        ({"optimizer": "adam"}, TypeError, "optimizer"),
        ({"loss_fn": 3}, TypeError, "loss_fn"),
        ({"grad_clip": 0.0}, ValueError, "grad_clip"),
        ({"scheduler_interval": "batch"}, ValueError, "scheduler_interval"),
    ],
)
def test_fit_rejects_bad_arguments(kwargs, error, match):
    model, opt = setup()
    train, _ = loaders()
    args = {"epochs": 1, "optimizer": opt, "loss_fn": nn.CrossEntropyLoss(), "device": "cpu", "progress": False}
    args.update(kwargs)
    with pytest.raises(error, match=match):
        fit(model, train, **args)


def test_fit_rejects_bad_batches_and_empty_loaders():
    model, opt = setup()
    kw = {"epochs": 1, "optimizer": opt, "loss_fn": nn.CrossEntropyLoss(), "device": "cpu", "progress": False}
    with pytest.raises(ValueError, match=r"\(\*inputs, target\)"):
        fit(model, [torch.randn(4, 2)], **kw)
    with pytest.raises(ValueError, match="no examples"):
        fit(model, [], **kw)
    with pytest.raises(ValueError, match="no examples"):
        evaluate(model, [], nn.CrossEntropyLoss())


def test_history_is_a_plain_dataclass():
    h = History()
    assert h.epochs == 0 and h.train_loss == []


# --- sequence-to-sequence: label-smoothed loss, the paper's warm-up schedule ---------------------


def test_sequence_cross_entropy_is_label_smoothing_over_real_tokens():
    from lib.train import SequenceCrossEntropy

    B, T, V, pad, eps = 3, 5, 7, 0, 0.1
    logits = torch.randn(B, T, V, requires_grad=True)
    target = torch.randint(1, V, (B, T))
    target[0, 3:] = pad
    target[2, 1:] = pad
    loss = SequenceCrossEntropy(pad, label_smoothing=eps)(logits, target)
    # written out: (1 - eps) * NLL of the reference + eps * mean over the vocabulary of -log p, real tokens only
    logp = torch.log_softmax(logits, dim=-1)
    nll = -logp.gather(-1, target[..., None]).squeeze(-1)  # (B, T)
    smooth = -logp.mean(-1)  # (B, T)
    real = target != pad
    expected = ((1 - eps) * nll + eps * smooth)[real].mean()
    assert torch.allclose(loss, expected, atol=1e-6)
    plain = SequenceCrossEntropy(pad)(logits, target)
    assert torch.allclose(plain, nll[real].mean(), atol=1e-6)
    loss.backward()
    assert logits.grad[0, 3:].abs().max() == 0, "padding positions must not get a gradient"
    with pytest.raises(ValueError, match=r"\(B, T, V\)"):
        SequenceCrossEntropy(pad)(logits[0], target[0])
    with pytest.raises(ValueError, match="label_smoothing"):
        SequenceCrossEntropy(pad, label_smoothing=1.0)


def test_warmup_schedule_is_the_papers_formula():
    from lib.train import transformer_lr, warmup_schedule

    d, warm = 512, 4000
    model = nn.Linear(3, 1)
    opt = torch.optim.Adam(model.parameters(), lr=0.123, betas=(0.9, 0.98), eps=1e-9)
    sched = warmup_schedule(opt, d, warm)
    rates = []
    for _ in range(8000):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    for step in (1, 2, 100, 3999, 4000, 4001, 8000):
        assert rates[step - 1] == pytest.approx(d**-0.5 * min(step**-0.5, step * warm**-1.5), rel=1e-9)
    assert max(rates) == pytest.approx((d * warm) ** -0.5) and rates.index(max(rates)) == warm - 1
    assert transformer_lr(10, d, warm) == pytest.approx(10 * d**-0.5 * warm**-1.5)
    with pytest.raises(ValueError, match="from 1"):
        transformer_lr(0, d, warm)


def test_fit_stops_at_max_steps_and_time_limit():
    x, y = torch.randn(64, 3), torch.randint(0, 2, (64,))
    loader = DataLoader(TensorDataset(x, y), batch_size=8)
    model = nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    h = fit(model, loader, epochs=5, optimizer=opt, loss_fn=nn.CrossEntropyLoss(), device="cpu", progress=False,
            verbose=False, max_steps=11)
    assert len(h.step_loss) == 11 and h.epochs == 2
    h = fit(model, loader, epochs=5, optimizer=opt, loss_fn=nn.CrossEntropyLoss(), device="cpu", progress=False,
            verbose=False, time_limit=1e-9)
    assert len(h.step_loss) == 1 and h.epochs == 1
    with pytest.raises(ValueError, match="max_steps"):
        fit(model, loader, epochs=1, optimizer=opt, loss_fn=nn.CrossEntropyLoss(), max_steps=0)
