"""lib.data's image datasets: the IDX reader (on small IDX files written here), Fashion-MNIST, digits."""

from __future__ import annotations

import gzip
import hashlib
import struct
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from lib import data


def write_idx(path: Path, array: np.ndarray, type_byte: int, *, gz: bool = False, extra: bytes = b"") -> bytes:
    """An IDX file by the format's definition: 00 00 <type> <ndim>, big-endian int32 sizes, big-endian data."""
    big = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}[type_byte]
    raw = bytes([0, 0, type_byte, array.ndim]) + b"".join(struct.pack(">i", s) for s in array.shape)
    raw += array.astype(big).tobytes() + extra
    payload = gzip.compress(raw) if gz else raw
    path.write_bytes(payload)
    return payload


@pytest.mark.parametrize("type_byte,dtype", [(0x08, np.uint8), (0x09, np.int8), (0x0B, np.int16), (0x0C, np.int32),
                                             (0x0D, np.float32), (0x0E, np.float64)])
@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_round_trips_every_type(tmp_path, type_byte, dtype, gz):
    rng = np.random.default_rng(0)
    a = (rng.standard_normal((3, 5, 4)) * 50).astype(dtype) if dtype not in (np.uint8,) else \
        rng.integers(0, 256, (3, 5, 4)).astype(np.uint8)
    write_idx(tmp_path / "a.idx", a, type_byte, gz=gz)
    b = data.read_idx(tmp_path / "a.idx")
    assert b.shape == a.shape and b.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(b, a)


def test_read_idx_labels_and_large_sizes(tmp_path):
    labels = np.arange(300) % 10
    write_idx(tmp_path / "l.idx.gz", labels, 0x08, gz=True)
    np.testing.assert_array_equal(data.read_idx(tmp_path / "l.idx.gz"), labels)  # 300 needs more than one byte


def test_read_idx_errors_are_clear(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x01\x02\x08\x01" + b"\x00" * 8)
    with pytest.raises(data.DataError, match="not an IDX file"):
        data.read_idx(tmp_path / "bad")
    (tmp_path / "type").write_bytes(b"\x00\x00\x07\x01\x00\x00\x00\x01\x00")
    with pytest.raises(data.DataError, match="unknown IDX type byte 0x07"):
        data.read_idx(tmp_path / "type")
    write_idx(tmp_path / "short", np.zeros((2, 3), np.uint8), 0x08)
    (tmp_path / "short").write_bytes((tmp_path / "short").read_bytes()[:-1])
    with pytest.raises(data.DataError, match=r"shape \(2, 3\).*has 5"):
        data.read_idx(tmp_path / "short")
    write_idx(tmp_path / "long", np.zeros(4, np.uint8), 0x08, extra=b"\x00")
    with pytest.raises(data.DataError, match="has 5"):
        data.read_idx(tmp_path / "long")
    (tmp_path / "hdr").write_bytes(b"\x00\x00\x08\x03\x00\x00")
    with pytest.raises(data.DataError, match="truncated IDX header"):
        data.read_idx(tmp_path / "hdr")
    (tmp_path / "gz").write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x09" + b"\x00" * 9)[:-6])
    with pytest.raises(data.DataError, match="gzip"):
        data.read_idx(tmp_path / "gz")


def test_fashion_mnist_registry_entries_use_the_canonical_urls_and_md5s():
    expected = {
        "train-images": ("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
        "train-labels": ("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe"),
        "test-images": ("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79"),
        "test-labels": ("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310"),
    }
    for key, (file, md5) in expected.items():
        ds = data.REGISTRY[f"fashion-mnist-{key}"]
        assert ds.url == f"http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/{file}"
        assert ds.checksums == {"md5": md5} and ds.kind == "file"


@pytest.fixture
def fake_fashion(tmp_path, monkeypatch):
    """Small Fashion-MNIST-shaped IDX files in an empty cache, with registry entries whose md5s are theirs."""
    cache = tmp_path / "cache"
    (cache / "fashion-mnist").mkdir(parents=True)
    monkeypatch.setenv("COURSE_DATA_DIR", str(cache))
    monkeypatch.delenv("COURSE_DATA_MIRROR", raising=False)
    monkeypatch.setenv("COURSE_DATA_OFFLINE", "1")
    rng = np.random.default_rng(1)
    arrays = {"train": (rng.integers(0, 256, (7, 28, 28)).astype(np.uint8), rng.integers(0, 10, 7)),
              "test": (rng.integers(0, 256, (3, 28, 28)).astype(np.uint8), rng.integers(0, 10, 3))}
    for split, (images, labels) in arrays.items():
        for part, a in (("images", images), ("labels", labels)):
            ds = data.REGISTRY[f"fashion-mnist-{split}-{part}"]
            payload = write_idx(cache / ds.target, a, 0x08, gz=True)
            monkeypatch.setitem(data.REGISTRY, ds.name, replace(ds, checksums={"md5": hashlib.md5(payload).hexdigest()},
                                                                 digest=hashlib.sha256(payload).hexdigest()))
    return cache, arrays


def test_load_fashion_mnist_reads_and_checks_the_files(fake_fashion):
    cache, arrays = fake_fashion
    for split in ("train", "test"):
        images, labels = data.load_fashion_mnist(split)
        np.testing.assert_array_equal(images, arrays[split][0])
        np.testing.assert_array_equal(labels, arrays[split][1])
        assert labels.dtype == np.int64
    with pytest.raises(ValueError, match="'train' or 'test'"):
        data.load_fashion_mnist("val")


def test_load_fashion_mnist_rejects_a_file_with_the_wrong_md5(fake_fashion, monkeypatch):
    cache, _ = fake_fashion
    ds = data.REGISTRY["fashion-mnist-test-labels"]
    monkeypatch.setitem(data.REGISTRY, ds.name, replace(ds, checksums={"md5": "0" * 32}))
    with pytest.raises(data.ChecksumError, match="expected md5 0{32}"):
        data.load_fashion_mnist("test")


def test_load_fashion_mnist_offline_says_where_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_DATA_DIR", str(tmp_path / "empty"))
    monkeypatch.delenv("COURSE_DATA_MIRROR", raising=False)
    monkeypatch.setenv("COURSE_DATA_OFFLINE", "1")
    with pytest.raises(data.DatasetNotFoundError, match=r"fashion-mnist.s3-website.*train-images-idx3-ubyte.gz"):
        data.load_fashion_mnist("train")


def test_digits_split_is_fixed_stratified_and_complete():
    x_tr, y_tr, x_te, y_te = data.load_digits_split()
    assert x_tr.shape == (1347, 1, 8, 8) and x_te.shape == (450, 1, 8, 8)
    assert x_tr.dtype == torch.float32 and y_tr.dtype == torch.int64
    assert 0.0 <= float(x_tr.min()) and float(x_tr.max()) <= 1.0
    from sklearn.datasets import load_digits

    d = load_digits()
    full = np.bincount(d.target) / len(d.target)
    np.testing.assert_allclose(y_te.bincount().numpy() / len(y_te), full, atol=0.01)  # stratified
    again = data.load_digits_split()
    assert all(torch.equal(a, b) for a, b in zip((x_tr, y_tr, x_te, y_te), again, strict=True))  # fixed
    # every image exactly once: train and test together are the whole dataset
    together = torch.cat([x_tr, x_te]).flatten(1)
    ref = torch.tensor(d.images, dtype=torch.float32).flatten(1) / 16
    key = lambda t: sorted(map(tuple, t.tolist()))  # noqa: E731
    assert key(together) == key(ref)
    other = data.load_digits_split(seed=1)
    assert not torch.equal(other[3], y_te)
