"""lib.data with data placed by hand: archives and single files a user puts in the cache or a mirror.

For every dataset of the registry (so every kind: tar, zip, single file) a *twin* is built here:
the registry entry itself (same kind, filename, target, digest folders or file, checksum
algorithms), with toy content whose content digest is put in the entry. The twin keeps the
real entry's archive checksums, which the toy archive cannot match: that is an archive whose
content looks right but whose checksum is wrong (re-packed, another release, a different
download). It must be refused with ``ChecksumError`` in every verification mode, from the
cache and from a mirror, and nothing may be extracted, downloaded or deleted.
Downloads are served by replacing ``lib.data._urlopen`` and counted (there must be none).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import itertools
import os
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from lib import data

NAMES = sorted(data.REGISTRY)
MODES = ("fast", "full", "none")
WHERE = ("cache", "mirror")
EVERY_PLACE_MODE_AND_KIND = pytest.mark.parametrize(
    ("name", "verify", "where"), list(itertools.product(NAMES, MODES, WHERE))
)


def content_of(ds: data.Dataset) -> dict[str, bytes] | bytes:
    """Toy content laid out as the real dataset is: files relative to its root, or one file's bytes."""
    if ds.kind == "file":
        return f"the {ds.name} text, placed by hand\n".encode()
    if ds.digest_dirs:
        files = {f"{d}/0_{i}.txt": f"review {i} in {d}".encode() for i, d in enumerate(ds.digest_dirs)}
        return {**files, "README": b"not counted by the digest"}
    assert ds.digest_file is not None
    return {ds.digest_file: b"Go.\tVa !\nHi.\tSalut !\n", "_about.txt": b"not counted by the digest"}


def archive_of(ds: data.Dataset, content: dict[str, bytes] | bytes) -> bytes:
    """The bytes of an archive of ``content`` as the canonical one is laid out (top folder = target)."""
    if isinstance(content, bytes):
        return content
    top = Path(ds.target).name
    buf = io.BytesIO()
    if ds.kind == "tar":
        with tarfile.open(fileobj=buf, mode="w:gz") as tf:
            for rel, payload in content.items():
                info = tarfile.TarInfo(f"{top}/{rel}")
                info.size = len(payload)
                tf.addfile(info, io.BytesIO(payload))
    else:
        with zipfile.ZipFile(buf, "w") as zf:
            for rel, payload in content.items():
                zf.writestr(f"{top}/{rel}", payload)
    return buf.getvalue()


def digest_of(ds: data.Dataset, content: dict[str, bytes] | bytes, scratch: Path) -> str:
    """The content digest the registry would hold for ``content`` (README's definition, via lib)."""
    if isinstance(content, bytes):
        return hashlib.sha256(content).hexdigest()
    if ds.digest_file is not None:
        return hashlib.sha256(content[ds.digest_file]).hexdigest()
    for rel, payload in content.items():
        (scratch / rel).parent.mkdir(parents=True, exist_ok=True)
        (scratch / rel).write_bytes(payload)
    return data.tree_digest(scratch, ds.digest_dirs)


def twin(name: str, tmp_path: Path, *, right_checksums: bool) -> tuple[data.Dataset, bytes, dict | bytes]:
    """The registry entry ``name`` with toy content: ``(entry, archive bytes, content)``.

    The content digest always matches the content; the archive checksums are the real entry's
    (wrong for the toy archive) unless ``right_checksums``.
    """
    real = data.REGISTRY[name]
    content = content_of(real)
    archive = archive_of(real, content)
    checksums = dict(real.checksums)
    if right_checksums:
        checksums = {algo: hashlib.new(algo, archive).hexdigest() for algo in real.checksums}
    else:
        assert all(hashlib.new(a, archive).hexdigest() != v for a, v in checksums.items())
    entry = dataclasses.replace(
        real, url=f"http://example.invalid/{real.filename}", checksums=checksums,
        digest=digest_of(real, content, tmp_path / "scratch"),
    )
    return entry, archive, content


@pytest.fixture
def env(tmp_path, monkeypatch):
    """An empty cache, an empty mirror (named by COURSE_DATA_MIRROR), downloads counted."""
    cache, mirror = tmp_path / "cache", tmp_path / "mirror"
    cache.mkdir()
    mirror.mkdir()
    monkeypatch.setenv("COURSE_DATA_DIR", str(cache))
    monkeypatch.setenv("COURSE_DATA_MIRROR", str(mirror))
    monkeypatch.delenv("COURSE_DATA_OFFLINE", raising=False)
    calls: list[str] = []

    def no_download(url, timeout=60.0):
        calls.append(url)
        raise AssertionError(f"nothing may be downloaded, asked for {url}")

    monkeypatch.setattr(data, "_urlopen", no_download)
    return cache, mirror, calls


def place(root: Path, ds: data.Dataset, archive: bytes) -> Path:
    """Put ``archive`` where a user would, at ``root/filename``."""
    path = root / ds.filename
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(archive)
    return path


def leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.rglob("*") if ".part" in p.name or ".extract-" in p.name)


@EVERY_PLACE_MODE_AND_KIND
def test_archive_with_a_wrong_checksum_is_refused(env, tmp_path, name, verify, where):
    cache, mirror, calls = env
    ds, archive, _ = twin(name, tmp_path, right_checksums=False)
    placed = place(cache if where == "cache" else mirror, ds, archive)
    with pytest.raises(data.ChecksumError) as info:
        data.fetch(name, registry={name: ds}, verify=verify, progress=False)
    msg = str(info.value)
    algo, expected = next(iter(ds.checksums.items()))
    assert "checksum mismatch" in msg and f"{algo} {expected}" in msg and str(placed) in msg
    assert hashlib.new(algo, archive).hexdigest() in msg  # what the file has
    assert calls == []  # no silent download instead
    assert placed.read_bytes() == archive  # a user's file is never deleted or changed
    if ds.kind != "file":
        assert not (cache / ds.target).exists()  # nothing extracted
    assert leftovers(cache) == []


@EVERY_PLACE_MODE_AND_KIND
def test_archive_with_the_right_checksum_is_used(env, tmp_path, name, verify, where):
    cache, mirror, calls = env
    ds, archive, content = twin(name, tmp_path, right_checksums=True)
    root = cache if where == "cache" else mirror
    placed = place(root, ds, archive)
    if where == "mirror":  # a mirror is read-only
        placed.chmod(stat.S_IRUSR)
    path = data.fetch(name, registry={name: ds}, verify=verify, progress=False)
    assert calls == []
    assert placed.read_bytes() == archive  # kept where it was put
    if ds.kind == "file":
        assert path == placed and path.read_bytes() == content
    else:
        assert path == cache / ds.target  # extracted into the cache, also from a mirror
        assert {rel: (path / rel).read_bytes() for rel in content} == content
        assert data.fetch(name, registry={name: ds}, verify=verify) == path  # found extracted next time
    assert leftovers(cache) == []


@pytest.mark.parametrize("where", WHERE)
@pytest.mark.parametrize("verify", MODES)
@pytest.mark.parametrize("name", [n for n in NAMES if data.REGISTRY[n].kind == "file"])
def test_a_wrong_single_file_is_refused_against_the_real_registry(env, name, verify, where):
    """The real entry: a user saves another copy of the text (here: Windows line endings) by hand."""
    cache, mirror, calls = env
    ds = data.REGISTRY[name]
    placed = place(cache if where == "cache" else mirror, ds, b"Some other text.\r\nNot the canonical file.\r\n")
    with pytest.raises(data.ChecksumError, match="checksum mismatch"):
        data.fetch(name, verify=verify, progress=False)
    assert calls == [] and placed.exists()


def test_a_single_file_is_hashed_once_until_it_changes(env, tmp_path, monkeypatch):
    """After one check, "fast" and "none" trust the stamp; "full" rehashes; a file replaced by hand is checked again."""
    cache, _, _ = env
    name = next(n for n in NAMES if data.REGISTRY[n].kind == "file")
    ds, archive, _ = twin(name, tmp_path, right_checksums=True)
    reg = {name: ds}
    placed = place(cache, ds, archive)
    hashed: list[str] = []
    real = data.file_digest
    monkeypatch.setattr(data, "file_digest", lambda p, algo="sha256": hashed.append(algo) or real(p, algo))
    data.fetch(name, registry=reg, verify="none")
    first = len(hashed)
    assert first == len(ds.checksums) + 1  # every archive checksum, then the content digest
    data.fetch(name, registry=reg, verify="none")
    data.fetch(name, registry=reg, verify="fast")
    assert len(hashed) == first  # the stamp was trusted
    data.fetch(name, registry=reg, verify="full")
    assert len(hashed) == 2 * first
    placed.write_bytes(archive + b"one more line\n")  # replaced by hand: new size
    os.utime(placed, ns=(placed.stat().st_atime_ns, placed.stat().st_mtime_ns + 10**9))
    for verify in MODES:
        with pytest.raises(data.ChecksumError):
            data.fetch(name, registry=reg, verify=verify)


@pytest.mark.parametrize("kind", ["tar", "file"])
def test_a_bad_verify_mode_is_refused_whatever_is_found(env, tmp_path, kind):
    cache, _, _ = env
    name = next(n for n in NAMES if data.REGISTRY[n].kind == kind)
    ds, archive, _ = twin(name, tmp_path, right_checksums=True)
    place(cache, ds, archive)  # only an archive: fetch never reaches verify_path with the bad mode
    with pytest.raises(ValueError, match="verify must be 'fast', 'full' or 'none', got 'quick'"):
        data.fetch(name, registry={name: ds}, verify="quick")
    assert not (cache / ds.target).exists() or ds.kind == "file"
