"""Every public default of lib, tested explicitly, and less used arguments on every path they reach.

Most parity tests pass every argument explicitly, so a changed default (a padding side, an
epsilon, a base) or an argument that one path ignores (a custom ``scale`` on the fast path, a
non-default ``base`` beyond ``max_len``) goes unseen. Each test here checks three things:
the call without the argument equals the call with the documented value; that value is the
one the docstring, the paper or the reference library says (checked against a formula or the
reference, not against lib itself); and a non-default value changes the result, so that the
argument is not ignored. ``test_the_table_lists_every_default`` keeps the table complete
for the modules outside the attention core (whose API issue 16 redesigns).
"""

from __future__ import annotations

import inspect
import math
from collections import Counter

import pytest
import torch
import torch.nn.functional as F
from helpers import serve_imdb
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lib import (
    attention,
    checks,
    data,
    distributed,
    ffn,
    imdb,
    interop,
    memory,
    multihead,
    positional,
    runtime,
    text,
    train,
    transformer,
    translation,
)


def equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return a.shape == b.shape and torch.allclose(a, b, atol=1e-6, rtol=1e-5)
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(equal(x, y) for x, y in zip(a, b, strict=True))
    return a == b


# ---------------------------------------------------------------------------
# The table: every default of the modules outside the attention core, as documented
# ---------------------------------------------------------------------------

DOCUMENTED = {
    runtime.device: {"prefer": None},
    runtime.seed_everything: {"seed": 0, "deterministic": False},
    runtime.time_steps: {"warmup": 2, "repeats": 10},
    runtime.recorded_versions: {"path": None},
    runtime.version_drift: {"path": None, "packages": None},
    ffn.PositionWiseFFN.__init__: {"activation": "relu", "dropout": 0.0, "bias": True},
    ffn.PositionWiseFFNConv.__init__: {"activation": "relu", "dropout": 0.0, "bias": True},
    checks.check_shape: {"name": "tensor"},
    checks.check_close: {"name": "result", "atol": 1e-05, "rtol": 1e-04, "variants": None},
    checks.yours_or_reference: {"check": None},  # a non-default check: tests/test_checks_and_plot.py
    checks.check_causal: {"name": "model"},
    checks.check_permutation_equivariance: {"name": "model", "atol": 1e-05, "seed": 0},
    data.fetch: {"verify": "fast", "download": True, "progress": True, "registry": None},
    data.file_digest: {"algo": "sha256"},
    data.verify_path: {"mode": "fast"},
    text.Vocab.__init__: {"counter": None, "max_size": None, "min_freq": 1, "reserved": ()},
    text.Vocab.decode: {"skip_pad": True},
    text.pad_sequences: {"padding": "post", "truncating": "pre", "value": 0},
    imdb.load_imdb_texts: {"root": None},
    imdb.load_imdb: {"num_words": 10000, "maxlen": 256, "subset": None, "seed": 0, "padding": "post",
                     "truncating": "pre", "with_lengths": False},
    imdb.imdb_movies: {"split": "train", "root": None},  # tested in tests/test_imdb.py
    imdb.movie_disjoint_split: {"share": 0.1, "seed": 123, "order_seed": 0, "root": None},
    train.fit: {"val_loader": None, "device": None, "progress": True, "grad_clip": None, "scheduler": None,
                "scheduler_interval": "epoch", "seed": None, "verbose": True, "max_steps": None, "time_limit": None},
    train.evaluate: {"device": None},
    memory.tensor_bytes: {"dtype": torch.float32},
    memory.count_parameters: {"trainable_only": False},
    memory.layer_parameter_breakdown: {"d_ff": None, "bias": True, "num_norms": 2, "cross_attention": False},
    memory.layer_parameters: {"d_ff": None, "bias": True, "num_norms": 2, "cross_attention": False},
    memory.parameter_bytes: {"dtype": torch.float32},
    memory.adam_mixed_precision_bytes: {"fp32_gradients": True},
    memory.adam_state_bytes: {"dtype": torch.float32, "amsgrad": False, "step_dtype": torch.float32},
    memory.activation_bytes: {"num_saved": 1, "dtype": torch.float32},
    memory.attention_matrix_bytes: {"num_saved": 1, "dtype": torch.float32, "key_len": None},
    memory.encoder_layer_saved_tensors: {"d_ff": None, "activation": "relu", "masked": False, "norm_first": False,
                                         "dtype": torch.float32, "device": None},
    memory.encoder_layer_activation_bytes: {"d_ff": None},
    memory.measure_saved_tensors: {"exclude": ()},
    memory.cuda_peak_bytes: {"device": None},
    data.Dataset.__init__: {"digest_file": None, "digest_dirs": (), "description": "", "extra": None},
    train.History.__init__: {k: None for k in ("train_loss", "train_acc", "val_loss", "val_acc", "epoch_time",
                                               "step_loss", "grad_norm", "lr")},
    train.History.curves: {"metric": "loss"},
    # Added with lesson 07's and lesson 10's modules; their behaviour is tested in
    # tests/test_translation.py, tests/test_train.py, tests/test_decode.py and tests/test_memory.py.
    translation.load_fra_eng_pairs: {"path": None},
    translation.load_fra_eng: {"num_test": 2000, "seed": 0, "min_freq": 3, "num_train": None, "pairs": None},
    translation.TranslationBatches.__init__: {"pad": 0, "seed": 0, "shuffle": True},
    train.SequenceCrossEntropy.__init__: {"label_smoothing": 0.0},
    train.warmup_schedule: {"scale": 1.0},
    memory.decoder_layer_saved_tensors: {"d_ff": None, "activation": "relu", "memory_masked": False,
                                         "norm_first": False, "include_memory": True, "dtype": torch.float32,
                                         "device": None},
    memory.encoder_saved_tensors: {"masked": False, "dtype": torch.float32, "device": None},
    memory.decoder_saved_tensors: {"memory_masked": False, "dtype": torch.float32, "device": None},
    memory.transformer_saved_tensors: {"src_masked": False, "dtype": torch.float32, "device": None},
    memory.training_step_bytes: {"optimizer": "adam", "mixed_precision": False},
    # Added with lesson 11 (tested in tests/test_ffn.py, tests/test_train.py and below).
    ffn.SwiGLU.__init__: {"activation": "silu", "dropout": 0.0, "bias": False},
    train.cosine_lr: {"min_ratio": 0.1},
    train.cosine_schedule: {"min_ratio": 0.1},
    train.RandomWindows.__init__: {"seed": 0, "rank": None, "world_size": None},
    train.lm_loss: {"batch_size": 64, "max_windows": None},
    train.save_checkpoint: {"scheduler": None, "batches": None, "extra": None},
    train.load_checkpoint: {"optimizer": None, "scheduler": None, "batches": None},
    train.LMHistory.__init__: {"step_loss": None, "lr": None, "grad_norm": None, "eval_steps": None,
                               "val_loss": None, "seconds": 0.0, "tokens": 0},
    train.train_lm: {"start_step": 0, "scheduler": None, "grad_clip": 1.0, "evaluate": None, "eval_every": None,
                     "progress": True, "history": None, "accum_steps": 1},
    # Added with lesson 12 (tested in tests/test_distributed.py).
    distributed.Context.__init__: {"rank": 0, "world_size": 1, "local_rank": 0, "device": torch.device("cpu"),
                                   "backend": None},
    distributed.setup: {"device": None, "timeout": None},
    distributed.wrap: {"strategy": "ddp", "bucket_cap_mb": None},
    distributed.per_rank: {"world_size": None},
    distributed.no_sync: {"skip": True},
    distributed.full_state_dict: {"optimizer": None},
    distributed.load_full_state_dict: {"optimizer_state": None},
    distributed.launch: {"start_method": "fork", "device": "cpu", "threads": 1, "timeout": None},
    distributed.RankFailed.__init__: {"error": ""},
}
OUTSIDE_THE_CORE = (runtime, ffn, checks, data, text, imdb, translation, train, memory, distributed)


def defaults_of(fn) -> dict:
    """Defaults from the signature (a dataclass field's default_factory shows as None)."""
    found = {k: p.default for k, p in inspect.signature(fn).parameters.items() if p.default is not inspect.Parameter.empty}
    return {k: (None if repr(v) == "<factory>" else v) for k, v in found.items()}


def public_callables(module):
    for name in module.__all__:
        obj = getattr(module, name)
        if inspect.isclass(obj):
            if "__init__" in vars(obj):
                yield f"{name}.__init__", obj.__init__
            for attr, value in vars(obj).items():
                if inspect.isfunction(value) and not attr.startswith("_"):
                    yield f"{name}.{attr}", value
        elif inspect.isfunction(obj):
            yield name, obj


def test_the_table_lists_every_default():
    """A new or changed default outside the attention core must be added here, and tested below."""
    listed = {fn: d for fn, d in DOCUMENTED.items()}
    for module in OUTSIDE_THE_CORE:
        for name, fn in public_callables(module):
            found = defaults_of(fn)
            if found or fn in listed:
                assert fn in listed, f"{module.__name__}.{name} has defaults {found}: list and test them"
                assert found == listed[fn], f"{module.__name__}.{name}: {found} != documented {listed[fn]}"


# ---------------------------------------------------------------------------
# lib.text and lib.imdb: the padding side and everything load_imdb passes on
# ---------------------------------------------------------------------------


def test_pad_sequences_defaults_pad_after_keep_the_end_pad_with_zero():
    seqs = [[5, 6, 7, 8, 9], [3]]
    got = text.pad_sequences(seqs, 3)
    assert got.tolist() == [[7, 8, 9], [3, 0, 0]]  # truncating "pre" keeps the end; padding "post"
    assert equal(got, text.pad_sequences(seqs, 3, padding="post", truncating="pre", value=0))
    assert text.pad_sequences(seqs, 3, padding="pre").tolist() == [[7, 8, 9], [0, 0, 3]]
    assert text.pad_sequences(seqs, 3, truncating="post").tolist() == [[5, 6, 7], [3, 0, 0]]
    assert text.pad_sequences(seqs, 3, value=-1).tolist() == [[7, 8, 9], [3, -1, -1]]
    assert got.dtype == torch.int64


def test_vocab_defaults():
    counts = Counter({"a": 3, "b": 1, "c": 2})
    v = text.Vocab(counts)
    assert v.itos == ["<pad>", "<unk>", "a", "c", "b"]  # max_size None keeps all, min_freq 1 keeps "b"
    assert text.Vocab(counts, min_freq=2).itos == ["<pad>", "<unk>", "a", "c"]
    assert text.Vocab(counts, max_size=3).itos == ["<pad>", "<unk>", "a"]
    assert len(text.Vocab()) == 2  # counter None: only the reserved tokens
    assert v.decode([2, 0, 3]) == ["a", "c"]  # skip_pad True
    assert v.decode([2, 0, 3], skip_pad=False) == ["a", "<pad>", "c"]


TOY_REVIEWS = {
    "train/pos": ["great film , great acting , a great great story !", "great fun"],
    "train/neg": ["awful film , boring", "awful awful"],
    "test/pos": ["great"],
    "test/neg": ["boring film , truly awful and long"],
}


@pytest.fixture
def toy_imdb(tmp_path, monkeypatch):
    return serve_imdb(tmp_path, monkeypatch, TOY_REVIEWS)[0]


def test_load_imdb_defaults_reach_the_padding_and_the_cache(toy_imdb):
    train_ds, test_ds, vocab = imdb.load_imdb()
    x = train_ds.tensors[0]
    assert x.shape == (4, 256) and len(train_ds.tensors) == 2  # maxlen 256, with_lengths False
    assert len(vocab) <= 10000  # num_words
    first = vocab.encode(text.tokenize("great film , great acting , a great great story !"))
    row = next(i for i in range(len(x)) if x[i, : len(first)].tolist() == first)  # the order is shuffled
    assert x[row, len(first):].eq(0).all()  # padding "post"
    explicit = imdb.load_imdb(num_words=10000, maxlen=256, subset=None, seed=0, padding="post",
                              truncating="pre", with_lengths=False)
    assert equal(explicit[0].tensors, train_ds.tensors) and explicit[2].itos == vocab.itos
    # the other side: a separate cache entry, not the post-padded one
    pre = imdb.load_imdb(padding="pre")[0].tensors[0]
    assert pre[row, -len(first):].tolist() == first and pre[row, : -len(first)].eq(0).all()
    # truncating "pre" keeps the end of a long review; "post" its start
    short = imdb.load_imdb(maxlen=3)[0].tensors[0]
    assert short[row].tolist() == first[-3:]
    assert imdb.load_imdb(maxlen=3, truncating="post")[0].tensors[0][row].tolist() == first[:3]
    # lengths count real tokens on either padding side
    for side in ("post", "pre"):
        lengths = imdb.load_imdb(padding=side, with_lengths=True)[0].tensors[2]
        assert lengths.tolist() == (imdb.load_imdb(padding=side)[0].tensors[0] != 0).sum(1).tolist()


def test_load_imdb_subset_and_seed_defaults(toy_imdb):
    a = imdb.load_imdb(maxlen=8, subset=2)[0].tensors[0]
    assert equal(a, imdb.load_imdb(maxlen=8, subset=2, seed=0)[0].tensors[0])  # seed 0
    seeds = {tuple(imdb.load_imdb(maxlen=8, subset=2, seed=s)[0].tensors[0].flatten().tolist()) for s in range(6)}
    assert len(seeds) > 1  # the seed is used
    assert len(imdb.load_imdb(maxlen=8)[0]) == 4  # subset None: everything


def test_load_imdb_texts_default_root_fetches_imdb(monkeypatch, tmp_path):
    root, asked = serve_imdb(tmp_path, monkeypatch, TOY_REVIEWS)
    assert imdb.load_imdb_texts() == imdb.load_imdb_texts(root) and asked == ["imdb"]


# ---------------------------------------------------------------------------
# lib.memory: dtypes, float64 optimizer state, d_ff = 4 D
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("default_dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("param_dtype", [torch.float32, torch.float64, torch.float16])
@pytest.mark.parametrize("amsgrad", [False, True])
def test_adam_state_bytes_in_every_dtype_against_a_real_step(default_dtype, param_dtype, amsgrad):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(default_dtype)
    try:
        model = nn.Sequential(nn.Linear(5, 7), nn.Linear(7, 3, bias=False)).to(param_dtype)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3, amsgrad=amsgrad)
        model(torch.randn(4, 5, dtype=param_dtype)).float().sum().backward()
        opt.step()
        steps = {s["step"].dtype for s in opt.state.values()}
    finally:
        torch.set_default_dtype(previous)
    P, n = memory.count_parameters(model), len(list(model.parameters()))
    assert steps == {torch.float64 if default_dtype == torch.float64 else torch.float32}  # the documented rule
    predicted = memory.adam_state_bytes(P, n, param_dtype, amsgrad=amsgrad, step_dtype=next(iter(steps)))
    assert predicted == memory.optimizer_state_bytes(opt)
    if default_dtype == torch.float32:  # the defaults: step float32, no amsgrad
        assert memory.adam_state_bytes(P, n, param_dtype) == memory.adam_state_bytes(
            P, n, param_dtype, amsgrad=False, step_dtype=torch.float32)
    if param_dtype == torch.float32 and not amsgrad and default_dtype == torch.float32:
        assert memory.adam_state_bytes(P, n) == memory.optimizer_state_bytes(opt)  # dtype float32


def test_byte_counts_default_to_float32_and_one_tensor():
    assert memory.tensor_bytes((2, 3)) == 24 == memory.tensor_bytes((2, 3), torch.float32)
    assert memory.tensor_bytes((2, 3), torch.float64) == 48
    assert memory.parameter_bytes(10) == 40 and memory.parameter_bytes(10, torch.float64) == 80
    assert memory.activation_bytes(2, 3, 4) == 2 * 3 * 4 * 4 == memory.activation_bytes(2, 3, 4, 1, torch.float32)
    assert memory.activation_bytes(2, 3, 4, 2, torch.float64) == 2 * 3 * 4 * 2 * 8
    # key_len None: square (B, H, T, T); otherwise (B, H, T, Tk)
    assert memory.attention_matrix_bytes(2, 3, 5) == torch.empty(2, 3, 5, 5).nbytes
    assert memory.attention_matrix_bytes(2, 3, 5, key_len=7) == torch.empty(2, 3, 5, 7).nbytes
    assert memory.attention_matrix_bytes(2, 3, 5, 2, torch.float16) == 2 * torch.empty(2, 3, 5, 5).half().nbytes


def test_layer_parameter_defaults_are_an_encoder_layer_with_d_ff_4d():
    D = 8
    layer = nn.TransformerEncoderLayer(D, 2, dim_feedforward=4 * D)
    assert memory.layer_parameters(D) == sum(p.numel() for p in layer.parameters())  # d_ff None = 4 D, bias, 2 norms
    assert memory.layer_parameters(D) == memory.layer_parameters(D, 4 * D, bias=True, num_norms=2, cross_attention=False)
    assert memory.layer_parameters(D, 3 * D) != memory.layer_parameters(D)
    nob = nn.TransformerEncoderLayer(D, 2, dim_feedforward=4 * D, bias=False)
    assert memory.layer_parameters(D, bias=False, num_norms=0) == sum(p.numel() for p in nob.parameters()) - sum(
        p.numel() for m in nob.modules() if isinstance(m, nn.LayerNorm) for p in m.parameters())
    dec = nn.TransformerDecoderLayer(D, 2, dim_feedforward=4 * D)
    assert memory.layer_parameters(D, cross_attention=True, num_norms=3) == sum(p.numel() for p in dec.parameters())
    assert memory.layer_parameter_breakdown(D) == memory.layer_parameter_breakdown(D, 4 * D)


def test_counts_default_to_every_parameter():
    m = nn.Linear(3, 2)
    m.bias.requires_grad_(False)
    assert memory.count_parameters(m) == 8 and memory.count_parameters(m, trainable_only=True) == 6
    mp = memory.adam_mixed_precision_bytes(10)
    assert mp.per_parameter == 20 and mp == memory.adam_mixed_precision_bytes(10, fp32_gradients=True)
    assert memory.adam_mixed_precision_bytes(10, fp32_gradients=False).per_parameter == 16


def test_saved_tensor_defaults_describe_a_default_encoder_block():
    """relu, unmasked, post-norm, float32, d_ff = 4 D: what a default EncoderBlock saves, measured."""
    B, T, D, H = 2, 5, 8, 2
    block = transformer.EncoderBlock(D, H, 4 * D, norm_first=False)
    x = torch.randn(B, T, D, requires_grad=True)
    measured = memory.measure_saved_tensors(lambda: block(x), exclude=block.parameters())
    listed = memory.encoder_layer_saved_tensors(B, T, D, H)
    assert sorted(t.bytes for t in listed) == sorted(b for _, _, b in measured)
    assert listed == memory.encoder_layer_saved_tensors(B, T, D, H, 4 * D, activation="relu", masked=False,
                                                        norm_first=False, dtype=torch.float32)
    assert memory.encoder_layer_activation_bytes(B, T, D, H)["total"] == sum(t.bytes for t in listed)
    assert memory.encoder_layer_saved_tensors(B, T, D, H, activation="gelu") != listed


def test_measure_saved_tensors_excludes_nothing_by_default():
    lin = nn.Linear(4, 4)
    x = torch.randn(3, 4, requires_grad=True)
    everything = memory.measure_saved_tensors(lambda: torch.tanh(lin(x)))
    without = memory.measure_saved_tensors(lambda: torch.tanh(lin(x)), exclude=lin.parameters())
    assert len(everything) > len(without)


# ---------------------------------------------------------------------------
# lib.ffn
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [ffn.PositionWiseFFN, ffn.PositionWiseFFNConv])
def test_ffn_defaults_relu_no_dropout_with_bias(cls):
    m = cls(6, 10).train()
    x = torch.randn(2, 3, 6)
    first, second = (m.fc1, m.fc2) if cls is ffn.PositionWiseFFN else (m.conv1, m.conv2)
    assert first.bias is not None and second.bias is not None  # bias True
    w1, b1 = first.weight.reshape(10, 6), first.bias
    w2, b2 = second.weight.reshape(6, 10), second.bias
    expected = F.relu(x @ w1.T + b1) @ w2.T + b2  # relu; training mode yet deterministic: dropout 0
    assert equal(m(x), expected) and equal(m(x), m(x))
    gelu = cls(6, 10, activation="gelu")
    gelu.load_state_dict(m.state_dict())
    assert not equal(gelu(x), m(x))


# ---------------------------------------------------------------------------
# lib.train
# ---------------------------------------------------------------------------


class _Recorder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 2)
        self.modes: list[bool] = []
        self.devices: list[str] = []

    def forward(self, x):
        self.modes.append(self.training)
        self.devices.append(x.device.type)
        return self.lin(x)


def _loader(n: int = 8, batch: int = 4):
    g = torch.Generator().manual_seed(0)
    return DataLoader(TensorDataset(torch.randn(n, 2, generator=g), torch.randint(0, 2, (n,), generator=g)),
                      batch_size=batch)


def test_fit_defaults(monkeypatch, capsys):
    model = _Recorder().eval()  # arrives in eval mode: fit trains in training mode anyway
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    monkeypatch.setattr(train, "default_device", lambda: torch.device("cpu"))  # device None -> runtime.device()
    h = train.fit(model, _loader(), epochs=2, optimizer=opt, loss_fn=nn.CrossEntropyLoss(), scheduler=sched,
                  progress=False)
    assert model.modes == [True] * 4 and h.val_loss == []  # val_loader None
    assert h.lr == [0.1, 0.1, 0.05, 0.05]  # scheduler_interval "epoch"
    assert "epoch 1/2" in capsys.readouterr().out  # verbose True
    # grad_clip None: the plain SGD step, even for a large gradient
    x, y = torch.randn(4, 2), 100 * torch.randn(4, 2)
    big = _Recorder()
    ref = nn.Linear(2, 2)
    ref.load_state_dict(big.lin.state_dict())
    F.mse_loss(ref(x), y).backward()
    h2 = train.fit(big, [(x, y)], epochs=1, optimizer=torch.optim.SGD(big.parameters(), lr=0.01),
                   loss_fn=nn.MSELoss(), progress=False, verbose=False, device="cpu")
    assert h2.grad_norm[0] > 10  # large enough that any clipping would show
    assert equal(big.lin.weight.detach(), ref.weight.detach() - 0.01 * ref.weight.grad)


def test_fit_seed_none_does_not_reseed():
    model = _Recorder()
    shuffled = DataLoader(TensorDataset(torch.randn(16, 2), torch.randint(0, 2, (16,))), batch_size=4, shuffle=True)
    losses = []
    for _ in range(2):
        m = _Recorder()
        m.load_state_dict(model.state_dict())
        o = torch.optim.SGD(m.parameters(), lr=0.1)
        losses.append(train.fit(m, shuffled, epochs=1, optimizer=o, loss_fn=nn.CrossEntropyLoss(),
                                progress=False, verbose=False, device="cpu").step_loss)
    assert losses[0] != losses[1]  # the global generator moved on: another order


def test_evaluate_defaults_to_the_models_device_and_eval_mode(monkeypatch):
    model = _Recorder().train()
    monkeypatch.setattr(train, "default_device", lambda: (_ for _ in ()).throw(AssertionError("not consulted")))
    train.evaluate(model, _loader(), nn.CrossEntropyLoss())
    assert model.devices == ["cpu", "cpu"] and model.modes == [False, False] and model.training


# ---------------------------------------------------------------------------
# lib.runtime and lib.checks
# ---------------------------------------------------------------------------


def test_history_starts_empty():
    a, b = train.History(), train.History()
    assert a.epochs == 0 and a.train_loss == [] and a.lr == []
    a.train_loss.append(1.0)
    assert b.train_loss == []  # each History has lists of its own
    a.train_acc.append(0.5)
    assert a.curves() == a.curves("loss") == {"train": [1.0]} != a.curves("acc")


def test_seed_everything_defaults(monkeypatch):
    runtime.seed_everything()
    a = torch.randn(3)
    runtime.seed_everything(0)
    assert equal(a, torch.randn(3))
    runtime.seed_everything(1)
    assert not equal(a, torch.randn(3))
    assert not torch.are_deterministic_algorithms_enabled()  # deterministic False leaves it alone


def test_time_steps_defaults_warm_up_twice_and_repeat_ten_times():
    calls = []
    out = runtime.time_steps({"a": lambda: calls.append("a")}, torch.device("cpu"))
    assert len(calls) == 2 + 10 and set(out) == {"a"}
    calls.clear()
    runtime.time_steps({"a": lambda: calls.append("a")}, torch.device("cpu"), warmup=0, repeats=3)
    assert len(calls) == 3


def test_device_default_consults_the_environment(monkeypatch):
    monkeypatch.setenv("COURSE_DEVICE", "cpu")
    assert runtime.device() == torch.device("cpu") == runtime.device(None)
    monkeypatch.setenv("COURSE_DEVICE", "meta")
    assert runtime.device() == torch.device("meta") and runtime.device("cpu") == torch.device("cpu")


def test_check_close_default_tolerances():
    e = torch.ones(3)
    checks.check_close(e + 0.9e-5, e)  # atol 1e-5 (+ rtol 1e-4 x 1)
    with pytest.raises(AssertionError, match="^result: values differ"):  # name "result"; 1e-5 + 1e-4 < 1.5e-4
        checks.check_close(e + 1.5e-4, e)
    checks.check_close(e + 2e-4, e, atol=1e-3)
    with pytest.raises(AssertionError, match="^tensor: expected shape"):
        checks.check_shape(e, (2,))


# ---------------------------------------------------------------------------
# lib.data
# ---------------------------------------------------------------------------


def test_dataset_defaults_digest_the_target_itself(tmp_path):
    """No digest_file, no digest_dirs: the content digest is the sha256 of the target (a file)."""
    import hashlib

    f = tmp_path / "x.txt"
    f.write_bytes(b"content")
    entry = data.Dataset(name="x", url="u", filename="x.txt", checksums={}, kind="file", target="x.txt",
                         digest=hashlib.sha256(b"content").hexdigest())
    assert (entry.digest_file, entry.digest_dirs, entry.description, entry.extra) == (None, (), "", {})
    data.verify_path(entry, f, "full")
    with pytest.raises(data.ChecksumError):
        data.verify_path(data.Dataset(**{**entry.__dict__, "digest": "0" * 64}), f, "full")


def test_fetch_defaults_fast_verification_downloads_allowed(tmp_path, monkeypatch):
    import hashlib
    import io

    payload = b"a small text\n"
    entry = data.Dataset(name="t", url="http://example.invalid/t.txt", filename="t.txt",
                         checksums={"sha1": hashlib.sha1(payload).hexdigest()}, kind="file", target="t.txt",
                         digest=hashlib.sha256(payload).hexdigest())
    monkeypatch.setenv("COURSE_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("COURSE_DATA_MIRROR", raising=False)
    monkeypatch.delenv("COURSE_DATA_OFFLINE", raising=False)
    served = []

    class Response(io.BytesIO):
        headers = {"Content-Length": str(len(payload))}

    monkeypatch.setattr(data, "_urlopen", lambda url, timeout=60.0: served.append(url) or Response(payload))
    bars = []
    import tqdm.auto

    real_tqdm = tqdm.auto.tqdm
    monkeypatch.setattr(tqdm.auto, "tqdm", lambda *a, **kw: bars.append(kw.get("disable")) or real_tqdm(*a, **kw))
    path = data.fetch("t", registry={"t": entry})  # download True, progress True
    assert served == [entry.url] and bars == [False]
    hashed = []
    real = data.file_digest
    monkeypatch.setattr(data, "file_digest", lambda p, algo="sha256": hashed.append(algo) or real(p, algo))
    data.fetch("t", registry={"t": entry})  # verify "fast": the stamp, no hashing
    assert hashed == []
    data.fetch("t", registry={"t": entry}, verify="full")
    assert hashed
    assert real(path) == hashlib.sha256(payload).hexdigest()  # file_digest's algo: sha256
    monkeypatch.setattr(data, "file_digest", real)
    hashed.clear()
    data.verify_path(entry, path)  # mode "fast": stamped, nothing to do
    (tmp_path / "t.txt").unlink()
    with pytest.raises(data.DatasetNotFoundError):
        data.fetch("t", registry={"t": entry}, download=False)


# ---------------------------------------------------------------------------
# The attention core (stable parts of the API): defaults and arguments on both paths
# ---------------------------------------------------------------------------


def _qkv(B=2, H=3, Tq=4, Tk=6, Dh=5, Dv=7):
    return torch.randn(B, H, Tq, Dh), torch.randn(B, H, Tk, Dh), torch.randn(B, H, Tk, Dv)


def _written_out(q, k, v, mask=None, bias=None, scale=None):
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    s = q @ k.transpose(-2, -1) * scale
    if bias is not None:
        s = s + bias
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    return torch.softmax(s, -1) @ v


@pytest.mark.parametrize("fast", [False, True])
@pytest.mark.parametrize("scale", [None, 0.25, 2.0])
@pytest.mark.parametrize("with_mask", [False, True])
@pytest.mark.parametrize("with_bias", [False, True])
def test_sdpa_scale_mask_and_bias_on_both_paths(fast, scale, with_mask, with_bias):
    q, k, v = _qkv()
    mask = attention.padding_mask(torch.tensor([6, 2]), 6) & torch.ones(4, 6, dtype=torch.bool).tril(2)
    bias = torch.randn(3, 4, 6) if with_bias else None
    m = mask if with_mask else None
    out, w = attention.scaled_dot_product_attention(q, k, v, m, bias, scale=scale, fast=fast)
    assert equal(out, _written_out(q, k, v, m, bias, scale))
    assert (w is None) is fast
    if scale is None:  # the default is 1/sqrt(Dk), not 1 or 1/Dk
        assert equal(out, attention.scaled_dot_product_attention(q, k, v, m, bias, scale=1 / math.sqrt(5), fast=fast)[0])
    defaults = attention.scaled_dot_product_attention(q, k, v)
    assert equal(defaults[0], _written_out(q, k, v)) and defaults[1] is not None  # fast False, dropout 0


@pytest.mark.parametrize("fast", [False, True])
def test_mha_mask_and_bias_on_both_paths(fast):
    torch.manual_seed(0)
    explicit = multihead.MultiHeadAttention(12, 3).eval()
    other = multihead.MultiHeadAttention(12, 3, fast=fast).eval()
    other.load_state_dict(explicit.state_dict())
    x, mem = torch.randn(2, 4, 12), torch.randn(2, 6, 12)
    mask = attention.padding_mask(torch.tensor([6, 3]), 6)
    bias = torch.randn(3, 4, 6)
    assert equal(other(x, mem, mem, mask=mask, bias=bias), explicit(x, mem, mem, mask=mask, bias=bias))
    assert equal(other(x, mem), explicit(x, mem, mem))  # value defaults to key
    assert equal(other(x), explicit(x, x, x))  # key defaults to query


def test_mha_size_defaults():
    mha = multihead.MultiHeadAttention(12, 3)
    assert (mha.d_head, mha.value_dim, mha.out_dim, mha.kdim, mha.vdim) == (4, 4, 12, 12, 12)
    assert mha.dropout == 0.0 and not mha.fast and not mha.fused_qkv
    assert all(p.numel() for p in mha.parameters())
    assert sum(p.numel() for p in mha.parameters()) == 4 * (12 * 12 + 12)  # bias True on all four projections
    torch_ref = nn.MultiheadAttention(12, 3)
    assert sum(p.numel() for p in mha.parameters()) == sum(p.numel() for p in torch_ref.parameters())
    kv = multihead.MultiHeadAttention(12, 3, d_head=5)
    assert kv.value_dim == 5  # value_dim defaults to d_head, not to D // H
    assert interop.keras_parameter_count(16, 2, 2) == 284  # the docstring's Keras example
    assert interop.keras_parameter_count(16, 2, 2, 2, 16, kdim=16, vdim=16, bias=True) == 284
    assert interop.masks_from_torch() == (None, None)


def test_mha_is_deterministic_in_training_by_default():
    mha = multihead.MultiHeadAttention(8, 2).train()  # dropout 0.0
    x = torch.randn(2, 5, 8)
    assert equal(mha(x), mha(x))


def test_mask_helper_defaults():
    assert equal(attention.causal_mask(4), attention.causal_mask(4, 4))  # Tk defaults to Tq
    assert attention.causal_mask(3).tolist() == [[True, False, False], [True, True, False], [True, True, True]]
    m = attention.padding_mask(torch.tensor([2, 3]), 4)
    assert m.shape == (2, 1, 1, 4) and equal(m, attention.padding_mask(torch.tensor([2, 3]), 4, ndim=4))
    assert attention.padding_mask(torch.tensor([2, 3]), 4, ndim=3).shape == (2, 1, 4)
    s = torch.randn(2, 3, 4)
    assert equal(attention.masked_softmax(s), torch.softmax(s, -1))  # no mask, no bias, no lengths


def test_scoring_module_defaults(d2l):
    q, k, v = torch.randn(2, 3, 5), torch.randn(2, 6, 5), torch.randn(2, 6, 4)
    dot = attention.DotProductAttention().train()  # dropout 0, scaled True, no learned scale
    assert list(dot.parameters()) == []
    assert equal(dot(q, k, v), d2l.DotProductAttention(dropout=0.0)(q, k, v, None))
    assert equal(dot(q, k, v), torch.softmax(q @ k.transpose(1, 2) / math.sqrt(5), -1) @ v)
    assert equal(attention.DotProductAttention(scaled=False)(q, k, v), torch.softmax(q @ k.transpose(1, 2), -1) @ v)
    add = attention.AdditiveAttention(5, 5, 8).train()  # dropout 0
    assert equal(add(q, k, v), add(q, k, v))


def test_nadaraya_watson_defaults():
    x = torch.linspace(0, 5, 20)
    y = torch.sin(x)
    q = torch.tensor([1.0, 2.5])
    out, w = attention.nadaraya_watson(q, x, y)
    ref = torch.softmax(-((q[:, None] - x[None, :]) ** 2) / 2, -1)  # gaussian kernel, bandwidth 1
    assert equal(w, ref) and equal(out, ref @ y)
    assert not equal(attention.nadaraya_watson(q, x, y, bandwidth=0.5)[1], w)
    nw = attention.NadarayaWatson()
    assert nw.w.item() == 1.0 and equal(nw(q, x, y), out)  # w = 1: the same Gaussian


# ---------------------------------------------------------------------------
# lib.positional: bases, tables beyond max_len, pairings
# ---------------------------------------------------------------------------


def _table(T, D, base):
    pos = torch.arange(T, dtype=torch.float64)[:, None]
    inv = base ** (-torch.arange(0, D, 2, dtype=torch.float64) / D)
    P = torch.zeros(T, D, dtype=torch.float64)
    P[:, 0::2], P[:, 1::2] = torch.sin(pos * inv), torch.cos(pos * inv)
    return P.float()


@pytest.mark.parametrize("base", [10000.0, 100.0])
def test_sinusoidal_table_beyond_max_len_keeps_the_base(base):
    enc = positional.SinusoidalEncoding(8, max_len=5, base=base).eval()
    x = torch.zeros(1, 12, 8)  # longer than max_len: rows computed on the fly
    assert equal(enc(x)[0], _table(12, 8, base))
    assert equal(enc(x[:, :4])[0], _table(4, 8, base))
    assert equal(positional.sinusoidal_table(12, 8, base=base), _table(12, 8, base))


def test_sinusoidal_defaults_are_the_paper_and_d2l(d2l):
    enc = positional.SinusoidalEncoding(8).train()  # dropout 0: deterministic in training
    assert enc.max_len == 1000 and enc.P.shape == (1000, 8)
    ref = d2l.PositionalEncoding(8, 0.0).eval()  # d2l: base 10000, max_len 1000
    x = torch.randn(2, 7, 8)
    assert equal(enc(x), ref(x)) and equal(enc(x), enc(x))
    assert equal(positional.sinusoidal_table(7, 8), _table(7, 8, 10000.0))
    assert positional.sinusoidal_table(3, 4).dtype == torch.float32
    learned = positional.LearnedPositionalEmbedding(8, max_len=10).train()
    assert equal(learned(x), learned(x))  # dropout 0


@pytest.mark.parametrize("base", [10000.0, 500.0])
@pytest.mark.parametrize("interleaved", [False, True])
def test_rotary_base_and_pairing(base, interleaved):
    Dh, T = 6, 9
    rope = positional.RotaryEmbedding(Dh, base=base, interleaved=interleaved)
    x = torch.randn(1, 1, T, Dh)
    theta = base ** (-torch.arange(0, Dh, 2, dtype=torch.float64) / Dh)
    ang = torch.arange(T, dtype=torch.float64)[:, None] * theta  # (T, Dh/2)
    if interleaved:  # pairs (2p, 2p + 1)
        a, b = x[..., 0::2].double(), x[..., 1::2].double()
        out = torch.stack((a * ang.cos() - b * ang.sin(), a * ang.sin() + b * ang.cos()), -1).flatten(-2)
    else:  # pairs (p, p + Dh/2)
        a, b = x[..., : Dh // 2].double(), x[..., Dh // 2:].double()
        out = torch.cat((a * ang.cos() - b * ang.sin(), a * ang.sin() + b * ang.cos()), -1)
    assert equal(rope.rotate(x), out.float())
    if base == 10000.0 and not interleaved:  # the defaults
        assert equal(positional.RotaryEmbedding(Dh).rotate(x), out.float())
    assert equal(rope.rotate(x), rope.rotate(x, torch.arange(T)))  # positions default 0..T-1
    assert rope.cos_sin(torch.arange(3))[0].dtype == torch.float32


def test_relative_and_alibi_defaults():
    rel = positional.RelativePosition(4, 2)
    assert rel.rel_k.shape == (5, 4) and rel.rel_v is not None  # shared by heads, values True
    alibi = positional.ALiBi(2)
    assert equal(alibi.bias(3), alibi.bias(3, 3))  # Tk defaults to Tq
    assert equal(positional.relative_distances(2, 3, 1), positional.relative_distances(2, 3, 1, device="cpu"))


# ---------------------------------------------------------------------------
# lib.transformer
# ---------------------------------------------------------------------------


def test_residual_defaults_no_dropout_eps_1e5():
    r = transformer.Residual(6, norm_first=False).train()
    x, sub = torch.randn(2, 3, 6), nn.Linear(6, 6)
    assert equal(r(x, sub), F.layer_norm(x + sub(x), (6,), eps=1e-5)) and equal(r(x, sub), r(x, sub))
    small = torch.randn(2, 3, 6) * 1e-3  # where eps matters
    assert equal(r(small, lambda t: t * 0), F.layer_norm(small, (6,), eps=1e-5))
    assert not equal(r(small, lambda t: t * 0), F.layer_norm(small, (6,), eps=1e-6))


def test_encoder_block_defaults_are_torchs_layer():
    """dropout 0, relu, eps 1e-5, bias, D // H per head: torch's TransformerEncoderLayer(dropout=0)."""
    D, H, Fh = 8, 2, 16
    block = transformer.EncoderBlock(D, H, Fh, norm_first=False).train()
    ref = nn.TransformerEncoderLayer(D, H, Fh, dropout=0.0, batch_first=True)
    assert sum(p.numel() for p in block.parameters()) == sum(p.numel() for p in ref.parameters())
    assert block.attention.d_head == D // H
    x = torch.randn(2, 5, D)
    assert equal(block(x), block(x))
    assert all(m.eps == 1e-5 for m in block.modules() if isinstance(m, nn.LayerNorm))
    assert isinstance(block.ffn.act, nn.ReLU)


def test_encoder_config_defaults_are_the_papers_base_model():
    c = transformer.EncoderConfig(vocab_size=100)
    paper = dict(d_model=512, num_heads=8, d_ff=2048, num_layers=6, dropout=0.1)
    assert {k: getattr(c, k) for k in paper} == paper
    assert (c.norm_first, c.positional, c.activation, c.eps, c.scale_embedding) == (False, "sinusoidal", "relu", 1e-5, True)
    small = transformer.EncoderConfig(vocab_size=11, d_model=8, num_heads=2, d_ff=16, num_layers=1, max_len=20)
    enc = transformer.Encoder(small).eval()
    tokens = torch.randint(0, 11, (2, 4))
    expected = enc.embedding(tokens) * math.sqrt(8) + positional.sinusoidal_table(4, 8)  # scaled, sinusoidal
    assert equal(enc.embed(tokens), expected)
    assert equal(enc(tokens), enc(tokens, mask=None, valid_lens=None))


# ---------------------------------------------------------------------------
# lib.train's language-model pieces (lesson 11)
# ---------------------------------------------------------------------------


def test_lm_training_defaults_clip_at_one_and_seed_zero():
    from lib.gpt import GPT, GPTConfig

    def run(**kw):
        torch.manual_seed(0)
        model = GPT(GPTConfig(vocab_size=7, context_len=6, d_model=8, num_layers=1, num_heads=2))
        opt = torch.optim.SGD(model.parameters(), lr=5.0)  # a large step, so that clipping shows
        batches = train.RandomWindows(torch.arange(50) % 7, block_size=6, batch_size=2, **kw.pop("windows", {}))
        return train.train_lm(model, batches, optimizer=opt, steps=4, progress=False, **kw)

    default = run()
    assert default.step_loss == run(grad_clip=1.0, windows={"seed": 0}).step_loss
    assert default.step_loss != run(grad_clip=None).step_loss  # the default clips
    assert default.step_loss != run(windows={"seed": 1}).step_loss  # the seed chooses the windows
    assert max(default.grad_norm) > 1.0  # there was something to clip


def test_lm_loss_batch_size_changes_nothing_but_the_batching():
    model = nn.Sequential(nn.Embedding(5, 5))
    tokens = torch.arange(40) % 5
    assert train.lm_loss(model, tokens, block_size=4) == pytest.approx(
        train.lm_loss(model, tokens, block_size=4, batch_size=1, max_windows=None))
