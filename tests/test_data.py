"""lib.data: cache, mirrors, downloads, checksums, atomic extraction, error messages.

Every archive is built here in tmp_path; downloads are served by replacing
``lib.data._urlopen`` (no network).  The IMDB mirror test runs only where the
shared mirror exists.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import urllib.error
import zipfile
from pathlib import Path

import pytest

from lib import data

FILES = {"train/pos/0_9.txt": b"great film", "train/neg/1_2.txt": b"awful", "README": b"readme"}


def sha(b: bytes, algo: str = "sha256") -> str:
    return hashlib.new(algo, b).hexdigest()


def expected_tree_digest(files: dict[str, bytes], dirs: tuple[str, ...]) -> str:
    lines = sorted(
        f"{rel}\t{sha(content)}\n".encode()
        for rel, content in files.items()
        if any(rel.startswith(d + "/") for d in dirs)
    )
    return sha(b"".join(lines))


def make_tar(path: Path, top: str = "toy") -> bytes:
    with tarfile.open(path, "w:gz") as tf:
        for rel, content in FILES.items():
            info = tarfile.TarInfo(f"{top}/{rel}")
            info.size = len(content)
            tf.addfile(info, io.BytesIO(content))
    return path.read_bytes()


def make_zip(path: Path) -> bytes:
    with zipfile.ZipFile(path, "w") as zf:
        for rel, content in FILES.items():
            zf.writestr(f"toyzip/{rel}", content)
    return path.read_bytes()


def tar_entry(archive: bytes, **kw) -> data.Dataset:
    fields = dict(
        name="toy",
        url="http://example.invalid/toy.tar.gz",
        filename="toy.tar.gz",
        checksums={"sha1": sha(archive, "sha1"), "md5": sha(archive, "md5")},
        kind="tar",
        target="toy",
        digest=expected_tree_digest(FILES, ("train/pos", "train/neg")),
        digest_dirs=("train/pos", "train/neg"),
        description="a toy dataset",
    )
    fields.update(kw)
    return data.Dataset(**fields)


class FakeResponse(io.BytesIO):
    def __init__(self, payload: bytes, length: int | None = None) -> None:
        super().__init__(payload)
        self.headers = {"Content-Length": str(len(payload) if length is None else length)}


@pytest.fixture
def env(tmp_path, monkeypatch):
    """An empty cache, no mirrors, a counter of download attempts."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("COURSE_DATA_DIR", str(cache))
    monkeypatch.delenv("COURSE_DATA_MIRROR", raising=False)
    monkeypatch.delenv("COURSE_DATA_OFFLINE", raising=False)
    calls = []

    def serve(payload: bytes | Exception, length: int | None = None):
        def fake(url, timeout=60.0):
            calls.append(url)
            if isinstance(payload, Exception):
                raise payload
            return FakeResponse(payload, length)

        monkeypatch.setattr(data, "_urlopen", fake)

    return cache, calls, serve


def leftovers(cache: Path) -> list[str]:
    """Temporary files or folders left in the cache (must be none)."""
    if not cache.exists():
        return []
    return sorted(p.name for p in cache.rglob("*") if ".part" in p.name or ".extract-" in p.name)


# ---------------------------------------------------------------------------
# registry and digests
# ---------------------------------------------------------------------------


def test_registry_has_the_four_datasets():
    assert {"imdb", "fra-eng", "tinyshakespeare", "timemachine"} <= set(data.REGISTRY)
    imdb = data.REGISTRY["imdb"]
    assert imdb.url == "http://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz"
    assert imdb.checksums["sha1"] == "01ada507287d82875905620988597833ad4e0903"
    assert imdb.target == "aclImdb"
    assert imdb.digest_dirs == ("train/pos", "train/neg", "test/pos", "test/neg")


def test_bad_registry_entries_are_rejected():
    with pytest.raises(ValueError, match="kind"):
        data.Dataset(name="x", url="u", filename="f", checksums={}, kind="rar", target="x", digest="0")
    with pytest.raises(ValueError, match="algorithm"):
        data.Dataset(name="x", url="u", filename="f", checksums={"crc": "0"}, kind="file", target="x", digest="0")


def test_tree_digest_follows_the_readme_definition(tmp_path):
    for rel, content in FILES.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(content)
    dirs = ("train/pos", "train/neg")
    assert data.tree_digest(tmp_path, dirs) == expected_tree_digest(FILES, dirs)


def test_cache_dir_does_not_depend_on_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.delenv("COURSE_DATA_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    assert data.cache_dir() == Path(data.__file__).resolve().parents[1] / "data"


def test_mirror_variable_is_a_path_list(tmp_path, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    monkeypatch.setenv("COURSE_DATA_MIRROR", f"{a}{os.pathsep}{os.pathsep}{b}")
    assert data.mirror_dirs() == [a.resolve(), b.resolve()]
    monkeypatch.setenv("COURSE_DATA_MIRROR", "../shared/data")
    assert data.mirror_dirs() == [(data.ROOT / "../shared/data").resolve()]


def test_unknown_dataset_is_a_key_error(env):
    with pytest.raises(KeyError, match="imdbb"):
        data.fetch("imdbb")


# ---------------------------------------------------------------------------
# download, verify, extract
# ---------------------------------------------------------------------------


def test_download_tar_verifies_and_extracts(env, tmp_path):
    cache, calls, serve = env
    archive = make_tar(tmp_path / "src.tar.gz")
    reg = {"toy": tar_entry(archive)}
    serve(archive)
    path = data.fetch("toy", registry=reg, progress=False)
    assert path == cache / "toy"
    assert (path / "train/pos/0_9.txt").read_bytes() == b"great film"
    assert not (cache / "toy.tar.gz").exists()  # downloaded archives are not kept
    assert leftovers(cache) == []
    # the second call finds the cache and does not download
    assert data.fetch("toy", registry=reg) == path
    assert len(calls) == 1


def test_download_zip(env, tmp_path):
    cache, calls, serve = env
    archive = make_zip(tmp_path / "src.zip")
    entry = data.Dataset(
        name="toyzip", url="http://example.invalid/toyzip.zip", filename="toyzip.zip",
        checksums={"sha1": sha(archive, "sha1")}, kind="zip", target="toyzip",
        digest=sha(FILES["README"]), digest_file="README",
    )
    serve(archive)
    path = data.fetch("toyzip", registry={"toyzip": entry}, progress=False)
    assert (path / "README").read_bytes() == b"readme"


def test_download_single_file_with_a_file_url(env, tmp_path, monkeypatch):
    cache, _, _ = env
    src = tmp_path / "src.txt"
    src.write_bytes(b"to be or not to be")
    monkeypatch.setattr(data, "_urlopen", lambda url, timeout=60.0: __import__("urllib.request").request.urlopen(url))
    entry = data.Dataset(
        name="t", url=src.as_uri(), filename="t/input.txt", checksums={"sha256": sha(src.read_bytes())},
        kind="file", target="t/input.txt", digest=sha(src.read_bytes()),
    )
    path = data.fetch("t", registry={"t": entry}, progress=False)
    assert path == cache / "t/input.txt" and path.read_bytes() == src.read_bytes()


def test_checksum_mismatch_names_both_digests_and_leaves_nothing(env, tmp_path):
    cache, _, serve = env
    archive = make_tar(tmp_path / "src.tar.gz")
    reg = {"toy": tar_entry(archive, checksums={"sha1": "0" * 40})}
    serve(archive)
    with pytest.raises(data.ChecksumError) as info:
        data.fetch("toy", registry=reg, progress=False)
    msg = str(info.value)
    assert "0" * 40 in msg and sha(archive, "sha1") in msg and "toy.tar.gz" in msg
    assert not (cache / "toy").exists() and not (cache / "toy.tar.gz").exists()
    assert leftovers(cache) == []


def test_short_download_is_detected(env, tmp_path):
    cache, _, serve = env
    archive = make_tar(tmp_path / "src.tar.gz")
    serve(archive[:100], length=len(archive))
    with pytest.raises(data.DataError, match="cut short"):
        data.fetch("toy", registry={"toy": tar_entry(archive)}, progress=False)
    assert leftovers(cache) == [] and not (cache / "toy.tar.gz").exists()


@pytest.mark.parametrize("kind", ["tar", "zip"])
def test_truncated_archive_is_a_clear_error_and_leaves_nothing(env, tmp_path, kind):
    """An archive whose checksum matches (a bad registry entry) but which is cut off."""
    cache, _, serve = env
    full = make_tar(tmp_path / "s.tar.gz") if kind == "tar" else make_zip(tmp_path / "s.zip")
    broken = full[: len(full) // 2]
    entry = tar_entry(broken, kind=kind, checksums={"sha256": sha(broken)})
    serve(broken)
    with pytest.raises(data.DataError, match="truncated or corrupt"):
        data.fetch("toy", registry={"toy": entry}, progress=False)
    assert not (cache / "toy").exists()
    assert leftovers(cache) == []


def test_corrupt_archive_content_digest_mismatch(env, tmp_path):
    cache, _, serve = env
    archive = make_tar(tmp_path / "src.tar.gz")
    serve(archive)
    with pytest.raises(data.ChecksumError, match="tree digest"):
        data.fetch("toy", registry={"toy": tar_entry(archive, digest="f" * 64)}, progress=False)
    assert not (cache / "toy").exists() and leftovers(cache) == []


def test_archive_without_the_expected_folder(env, tmp_path):
    cache, _, serve = env
    archive = make_tar(tmp_path / "src.tar.gz", top="other")
    serve(archive)
    with pytest.raises(data.DataError, match="does not contain toy/"):
        data.fetch("toy", registry={"toy": tar_entry(archive)}, progress=False)
    assert leftovers(cache) == []


def test_archive_placed_by_hand_is_used_offline(env, tmp_path, monkeypatch):
    cache, calls, _ = env
    cache.mkdir()
    archive = make_tar(cache / "toy.tar.gz")
    monkeypatch.setenv("COURSE_DATA_OFFLINE", "1")
    path = data.fetch("toy", registry={"toy": tar_entry(archive)})
    assert (path / "train/neg/1_2.txt").exists()
    assert (cache / "toy.tar.gz").exists()  # put there by hand: kept
    assert calls == []


def test_offline_with_nothing_cached_says_what_to_do(env, tmp_path):
    cache, _, serve = env
    archive = make_tar(tmp_path / "src.tar.gz")
    serve(urllib.error.URLError("no route to host"))
    with pytest.raises(data.DatasetNotFoundError) as info:
        data.fetch("toy", registry={"toy": tar_entry(archive)}, progress=False)
    msg = str(info.value)
    assert "http://example.invalid/toy.tar.gz" in msg
    assert str(cache / "toy.tar.gz") in msg and str(cache / "toy") in msg
    assert "COURSE_DATA_MIRROR" in msg and "no route to host" in msg
    assert isinstance(info.value, FileNotFoundError)
    assert leftovers(cache) == []


def test_offline_switch_never_downloads(env, tmp_path, monkeypatch):
    _, calls, serve = env
    archive = make_tar(tmp_path / "src.tar.gz")
    serve(archive)
    monkeypatch.setenv("COURSE_DATA_OFFLINE", "1")
    with pytest.raises(data.DatasetNotFoundError, match="switched off"):
        data.fetch("toy", registry={"toy": tar_entry(archive)})
    assert calls == []


# ---------------------------------------------------------------------------
# mirrors and cached verification
# ---------------------------------------------------------------------------


def write_tree(root: Path) -> None:
    for rel, content in FILES.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(content)


def test_mirror_is_used_and_verified(env, tmp_path, monkeypatch):
    cache, calls, _ = env
    empty, mirror = tmp_path / "empty", tmp_path / "mirror"
    write_tree(mirror / "toy")
    monkeypatch.setenv("COURSE_DATA_MIRROR", f"{empty}{os.pathsep}{mirror}")
    reg = {"toy": tar_entry(b"unused")}
    assert data.fetch("toy", registry=reg) == (mirror / "toy").resolve()
    assert calls == []
    assert not (cache / "toy").exists()  # a mirror is read, never copied


def test_bad_mirror_is_a_checksum_error(env, tmp_path, monkeypatch):
    _, _, _ = env
    mirror = tmp_path / "mirror"
    write_tree(mirror / "toy")
    (mirror / "toy/train/pos/0_9.txt").write_bytes(b"tampered")
    monkeypatch.setenv("COURSE_DATA_MIRROR", str(mirror))
    with pytest.raises(data.ChecksumError) as info:
        data.fetch("toy", registry={"toy": tar_entry(b"unused")})
    assert str(mirror / "toy") in str(info.value)


def test_fast_verification_is_cached_and_notices_changes(env, tmp_path, monkeypatch):
    _, _, _ = env
    mirror = tmp_path / "mirror"
    write_tree(mirror / "toy")
    monkeypatch.setenv("COURSE_DATA_MIRROR", str(mirror))
    reg = {"toy": tar_entry(b"unused")}
    hashed = []
    real = data._content_digest
    monkeypatch.setattr(data, "_content_digest", lambda ds, p: hashed.append(p) or real(ds, p))
    data.fetch("toy", registry=reg)
    data.fetch("toy", registry=reg)
    assert len(hashed) == 1  # the second check used the stamp
    data.fetch("toy", registry=reg, verify="full")
    assert len(hashed) == 2
    data.fetch("toy", registry=reg, verify="none")
    assert len(hashed) == 2
    # a changed file (new size and mtime) invalidates the stamp
    f = mirror / "toy/train/pos/0_9.txt"
    f.write_bytes(b"changed!!")
    os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10**9))
    with pytest.raises(data.ChecksumError):
        data.fetch("toy", registry=reg)
    with pytest.raises(ValueError, match="verify"):
        data.fetch("toy", registry=reg, verify="quick")


def test_corrupt_cache_is_reported_not_silently_used(env, tmp_path):
    cache, _, _ = env
    write_tree(cache / "toy")
    (cache / "toy/train/neg/1_2.txt").write_bytes(b"?")
    with pytest.raises(data.ChecksumError, match="Delete or replace"):
        data.fetch("toy", registry={"toy": tar_entry(b"unused")})


SHARED = Path(os.environ.get("COURSE_DATA_MIRROR", "/nonexistent").split(os.pathsep)[0])


@pytest.mark.skipif(not (SHARED / "timemachine.txt").exists(), reason="no shared data mirror")
def test_real_mirror_small_datasets(monkeypatch, tmp_path):
    monkeypatch.setenv("COURSE_DATA_DIR", str(tmp_path))
    for name in ("timemachine", "tinyshakespeare", "fra-eng"):
        assert data.fetch(name, verify="full").exists()
