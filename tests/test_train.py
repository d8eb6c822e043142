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


# ---------------------------------------------------------------------------
# Language-model training (lesson 11)
# ---------------------------------------------------------------------------


def _tiny_lm(seed: int = 0):
    from lib.gpt import GPT, GPTConfig

    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=11, context_len=8, d_model=16, num_layers=2, num_heads=2, n_kv_heads=None,
                         dropout=0.1))


def test_param_groups_decay_matrices_only():
    from lib.train import param_groups
    from lib.transformer import RMSNorm

    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 6), nn.LayerNorm(6), RMSNorm(6), nn.Linear(6, 3, bias=False))
    decay, other = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and other["weight_decay"] == 0.0
    assert [p.shape for p in decay["params"]] == [(6, 4), (3, 6)]  # the Linear weights
    assert {id(p) for p in other["params"]} == {id(model[0].weight), id(model[1].bias), id(model[2].weight),
                                                 id(model[2].bias), id(model[3].weight)}
    # a tied output layer counts as the embedding: once, without decay
    lm = _tiny_lm()
    decay, other = param_groups(lm, 0.1)
    ids = [id(p) for p in decay["params"] + other["params"]]
    assert len(ids) == len(set(ids)) == len(list(lm.parameters()))
    assert id(lm.embedding.weight) in {id(p) for p in other["params"]}
    opt = torch.optim.AdamW(param_groups(lm, 0.5), lr=0.1)
    with torch.no_grad():
        for p in lm.parameters():
            p.grad = torch.zeros_like(p)
    before = {id(p): p.detach().clone() for p in lm.parameters()}
    opt.step()  # zero gradients: only the decay moves parameters
    for p in lm.parameters():
        moved = not torch.equal(before[id(p)], p)
        assert moved == (id(p) in {id(q) for q in param_groups(lm, 0.5)[0]["params"]})
    with pytest.raises(ValueError, match="weight_decay"):
        param_groups(lm, -1.0)


def test_cosine_lr_matches_nanogpts_get_lr():
    from lib.train import cosine_lr, cosine_schedule

    lr, min_lr, warmup, total = 1e-3, 1e-4, 10, 50

    def nanogpt(it):  # nanoGPT train.py get_lr (it counts from 0), lr_decay_iters = total
        if it < warmup:
            return lr * (it + 1) / (warmup + 1)
        if it > total:
            return min_lr
        ratio = (it - warmup) / (total - warmup)
        return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)

    for s in range(0, 60):
        assert lr * cosine_lr(s, warmup_steps=warmup, total_steps=total, min_ratio=0.1) == pytest.approx(nanogpt(s))
    model = nn.Linear(2, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    sched = cosine_schedule(opt, warmup_steps=warmup, total_steps=total, min_ratio=0.1)
    seen = []
    for _ in range(total):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([nanogpt(s) for s in range(total)])
    assert max(seen) == pytest.approx(lr) and seen[-1] > min_lr
    for bad in (dict(warmup_steps=60, total_steps=50), dict(warmup_steps=1, total_steps=0)):
        with pytest.raises(ValueError, match="total_steps"):
            cosine_lr(0, **bad)
    with pytest.raises(ValueError, match="min_ratio"):
        cosine_lr(0, warmup_steps=1, total_steps=5, min_ratio=2.0)


@pytest.mark.parametrize("max_norm", [0.05, 1.0, 100.0])
def test_clip_gradients_matches_torch(max_norm):
    from lib.train import clip_gradients

    torch.manual_seed(0)
    a, b = nn.Linear(5, 4), nn.Linear(5, 4)
    b.load_state_dict(a.state_dict())
    x = torch.randn(3, 5)
    a(x).pow(2).sum().backward()
    b(x).pow(2).sum().backward()
    mine = clip_gradients(a.parameters(), max_norm)
    ref = torch.nn.utils.clip_grad_norm_(b.parameters(), max_norm)
    torch.testing.assert_close(mine, ref)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad)
    total = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in a.parameters()]))
    assert total <= max_norm * (1 + 1e-5)
    with pytest.raises(ValueError, match="max_norm"):
        clip_gradients(a.parameters(), 0.0)


def test_random_windows_are_shifted_windows_of_the_stream_and_repeat_with_the_seed():
    from lib.train import RandomWindows

    tokens = torch.arange(100)
    batches = RandomWindows(tokens, block_size=7, batch_size=5, seed=3)
    x, y = next(batches)
    assert x.shape == y.shape == (5, 7)
    assert torch.equal(y, x + 1)  # the next token of every position
    assert torch.equal(x[:, 1:], x[:, :-1] + 1)  # consecutive windows of the stream
    assert int(y.max()) <= 99
    again = RandomWindows(tokens, block_size=7, batch_size=5, seed=3)
    assert torch.equal(next(again)[0], x)
    state = batches.state_dict()
    nxt = next(batches)[0]
    batches.load_state_dict(state)
    assert torch.equal(next(batches)[0], nxt)
    starts = torch.cat([next(RandomWindows(torch.arange(10), block_size=8, batch_size=200, seed=s))[0][:, 0]
                        for s in range(3)])
    assert set(starts.tolist()) == {0, 1}  # every start s with s + T + 1 <= 10 is drawn, no other
    with pytest.raises(ValueError, match="block_size \\+ 1"):
        RandomWindows(torch.arange(5), block_size=5, batch_size=1)
    with pytest.raises(ValueError, match="1-D integer"):
        RandomWindows(torch.rand(20), block_size=5, batch_size=1)


def test_lm_loss_is_the_mean_cross_entropy_over_consecutive_windows():
    from lib.train import lm_loss

    model = _tiny_lm().train()
    tokens = torch.randint(0, 11, (45,), generator=torch.Generator().manual_seed(0))
    got = lm_loss(model, tokens, block_size=8, batch_size=2)
    assert model.training  # the mode is restored
    model.eval()
    with torch.no_grad():
        x, y = tokens[:40].view(5, 8), tokens[1:41].view(5, 8)
        expected = nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
        first_two = nn.functional.cross_entropy(model(x[:2]).flatten(0, 1), y[:2].flatten())
    assert got == pytest.approx(float(expected), rel=1e-5)
    assert lm_loss(model, tokens, block_size=8, max_windows=2) == pytest.approx(float(first_two), rel=1e-5)


def _run(steps, *, stop_at=None, path=None, seed=0):
    """Train the tiny LM for `steps` steps (dropout on); with stop_at, checkpoint there and resume in new objects."""
    from lib.train import (
        RandomWindows,
        cosine_schedule,
        load_checkpoint,
        param_groups,
        save_checkpoint,
        train_lm,
    )

    stream = torch.randint(0, 11, (500,), generator=torch.Generator().manual_seed(1))

    def build():
        model = _tiny_lm(seed)
        opt = torch.optim.AdamW(param_groups(model, 0.1), lr=3e-3)
        return model, opt, cosine_schedule(opt, warmup_steps=3, total_steps=steps), \
            RandomWindows(stream, block_size=8, batch_size=4, seed=seed)

    model, opt, sched, batches = build()
    torch.manual_seed(123)  # the dropout's generator: part of the state that must be restored
    if stop_at is None:
        return train_lm(model, batches, optimizer=opt, steps=steps, scheduler=sched, progress=False).step_loss
    first = train_lm(model, batches, optimizer=opt, steps=stop_at, scheduler=sched, progress=False).step_loss
    save_checkpoint(path, model=model, optimizer=opt, scheduler=sched, batches=batches, step=stop_at)
    torch.manual_seed(999)  # anything the process does in between
    model, opt, sched, batches = build()  # a fresh process would build these anew
    state = load_checkpoint(path, model=model, optimizer=opt, scheduler=sched, batches=batches)
    rest = train_lm(model, batches, optimizer=opt, steps=steps, start_step=state["step"], scheduler=sched,
                    progress=False).step_loss
    return first + rest


def test_a_stopped_and_resumed_run_gives_exactly_the_losses_of_the_uninterrupted_run(tmp_path):
    whole = _run(12)
    resumed = _run(12, stop_at=5, path=tmp_path / "ckpt.pt")
    assert len(whole) == len(resumed) == 12
    assert resumed == whole  # bit for bit, dropout and batches included
    assert _run(12, seed=1) != whole  # the comparison can fail


def test_resume_without_the_rng_states_differs(tmp_path, monkeypatch):
    """The check above is sensitive: skipping the RNG restore (dropout's generator) changes the losses."""
    import lib.train

    whole = _run(12)
    monkeypatch.setattr(lib.train, "set_rng_states", lambda states: None)
    assert _run(12, stop_at=5, path=tmp_path / "ckpt.pt") != whole


def test_train_lm_learns_records_and_evaluates(tmp_path):
    from lib.train import RandomWindows, lm_loss, train_lm

    model = _tiny_lm()
    stream = torch.arange(400) % 11  # a cycle: perfectly predictable
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    h = train_lm(model, RandomWindows(stream, block_size=8, batch_size=8), optimizer=opt, steps=60,
                 evaluate=lambda m: lm_loss(m, stream[:100], block_size=8), eval_every=20, progress=False)
    assert h.eval_steps == [20, 40, 60] and len(h.step_loss) == len(h.lr) == len(h.grad_norm) == 60
    assert h.val_loss[-1] < 0.3 * h.val_loss[0]
    assert h.tokens == 60 * 8 * 8 and h.tokens_per_second > 0
    with pytest.raises(ValueError, match="start_step"):
        train_lm(model, RandomWindows(stream, block_size=8, batch_size=8), optimizer=opt, steps=5, start_step=6)
    with pytest.raises(ValueError, match="eval_every"):
        train_lm(model, RandomWindows(stream, block_size=8, batch_size=8), optimizer=opt, steps=5, eval_every=2)


def test_checkpoint_errors_and_atomic_write(tmp_path):
    from lib.train import RandomWindows, load_checkpoint, save_checkpoint

    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    path = tmp_path / "c.pt"
    save_checkpoint(path, model=model, optimizer=opt, step=3, extra={"note": "x"})
    assert not (tmp_path / "c.pt.tmp").exists()
    state = load_checkpoint(path, model=model, optimizer=opt)
    assert state["step"] == 3 and state["extra"] == {"note": "x"}
    with pytest.raises(ValueError, match="no batch sampler"):
        load_checkpoint(path, model=model, batches=RandomWindows(torch.arange(10), block_size=2, batch_size=1))


def test_autocast_is_off_on_the_cpu():
    from lib.train import autocast

    with autocast("cpu"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
