"""Datasets: a registry of URLs and checksums, a cache, read-only mirrors, downloads.

``fetch(name)`` returns the local path of a dataset, looking in this order:

1. the **cache**: ``data/`` at the repository root (found from this file's
   location, never from the current working directory, since notebooks run in
   other folders), or the folder named by ``COURSE_DATA_DIR``;
2. **read-only mirrors**: the folders named by ``COURSE_DATA_MIRROR``
   (``os.pathsep``-separated, e.g. ``COURSE_DATA_MIRROR=../shared/data``;
   relative entries are taken from the repository root), laid out as the
   archives extract;
3. an **archive placed by hand** in the cache (e.g. ``data/aclImdb_v1.tar.gz``),
   or else in a mirror (``<mirror>/aclImdb_v1.tar.gz``), checked against the
   archive checksums and extracted into the cache;
4. a **download** from the canonical URL (urllib, with a tqdm progress bar),
   checked against the archive checksum, then extracted atomically.

Whatever is found is checked against the dataset's *content digest* (sha256 of
a file, or the tree digest of a folder, see ``data/README.md``).  Verifying the
50,000 IMDB reviews takes a few seconds, so ``verify="fast"`` (the default)
remembers a successful check in ``<cache>/.verified.json``, keyed by the
absolute path and a fingerprint of the tree (mtime and size of every folder
and file counted).  The next check re-reads only that
fingerprint (stat calls, no hashing).  ``verify="full"`` always hashes
everything; ``verify="none"`` only checks that an extracted folder exists.

An archive is checked against its archive checksums before it is extracted,
whatever ``verify`` says: one put in the cache or a mirror by hand whose
checksum is wrong is refused with ``ChecksumError``, even when its content
looks right.  A single-file dataset (``kind="file"``) is its own archive, so it
is checked (archive checksums and content digest) the first time it is seen at
a path, in every mode; ``"fast"`` and ``"none"`` then trust the stamp until the
file's size or mtime changes, and ``"full"`` checks it again every time.

Atomicity: downloads go to ``<file>.part`` and are renamed only after the
checksum matches; archives extract into a temporary folder next to the target,
which is renamed into place only after its content digest matches.  On any error
the temporary files are removed, so nothing half-written is ever found later.

Environment variables:
    COURSE_DATA_DIR      the cache folder (default: ``data/`` at the repository root).
    COURSE_DATA_MIRROR   read-only mirrors, ``os.pathsep``-separated.
    COURSE_DATA_OFFLINE  "1" never downloads (fail with instructions instead).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "Dataset",
    "REGISTRY",
    "DataError",
    "ChecksumError",
    "DatasetNotFoundError",
    "cache_dir",
    "mirror_dirs",
    "fetch",
    "file_digest",
    "tree_digest",
    "verify_path",
]

ROOT = Path(__file__).resolve().parents[1]
"""The repository root (this file is ``<root>/lib/data.py``)."""

_CHUNK = 1 << 20


class DataError(RuntimeError):
    """Something is wrong with a dataset on disk or in transit."""


class ChecksumError(DataError):
    """A file or folder does not have the digest the registry expects."""


class DatasetNotFoundError(DataError, FileNotFoundError):
    """Nothing usable in the cache or the mirrors, and no download possible."""


@dataclass(frozen=True)
class Dataset:
    """One registry entry.

    Attributes:
        name: registry key, e.g. ``"imdb"``.
        url: canonical download URL.
        filename: the name the download is saved under in the cache.
        checksums: digests of the downloaded file, ``{"sha1": ..., "md5": ...}``;
            every one given is checked.
        kind: ``"tar"`` (any compression tarfile reads), ``"zip"`` or ``"file"``
            (no extraction: the download *is* the dataset).
        target: where the dataset lives, relative to the cache or a mirror
            (``"aclImdb"``, ``"tinyshakespeare/input.txt"``).
        digest: the content digest: sha256 of ``target`` when it is a file, or
            of ``digest_file`` inside it; the tree digest over ``digest_dirs``
            when those are given.
        digest_file: for folders, the one file whose sha256 is ``digest``.
        digest_dirs: for folders, the sub-folders the tree digest counts.
        description: one line for error messages and listings.
    """

    name: str
    url: str
    filename: str
    checksums: dict[str, str]
    kind: str
    target: str
    digest: str
    digest_file: str | None = None
    digest_dirs: tuple[str, ...] = ()
    description: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in ("tar", "zip", "file"):
            raise ValueError(f"Dataset {self.name!r}: kind must be 'tar', 'zip' or 'file', got {self.kind!r}")
        for algo in self.checksums:
            if algo not in hashlib.algorithms_guaranteed:
                raise ValueError(f"Dataset {self.name!r}: unknown checksum algorithm {algo!r}")


REGISTRY: dict[str, Dataset] = {
    d.name: d
    for d in (
        Dataset(
            name="imdb",
            url="http://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz",
            filename="aclImdb_v1.tar.gz",
            checksums={
                "sha1": "01ada507287d82875905620988597833ad4e0903",
                "md5": "7c2ac02c03563afcf9b574c7e56c153a",
            },
            kind="tar",
            target="aclImdb",
            digest="4b0bfdfe140012ba264b743f2f135941b854bb46af27666f7613982147fe8a1a",
            digest_dirs=("train/pos", "train/neg", "test/pos", "test/neg"),
            description="IMDB movie reviews (Maas et al., ACL 2011), 25k train + 25k test",
        ),
        Dataset(
            name="fra-eng",
            url="http://d2l-data.s3-accelerate.amazonaws.com/fra-eng.zip",
            filename="fra-eng.zip",
            checksums={"sha1": "94646ad1522d915e7b0f9296181140edcf86a4f5"},
            kind="zip",
            target="fra-eng",
            digest="0bb85dbaa1c896844649094d7eaf2e34bee34e84fe362b26ce7e8f2e12aae104",
            digest_file="fra.txt",
            description="English-French sentence pairs (Tatoeba via manythings.org), as in d2l",
        ),
        Dataset(
            name="tinyshakespeare",
            url="https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
            filename="tinyshakespeare/input.txt",
            checksums={"sha256": "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"},
            kind="file",
            target="tinyshakespeare/input.txt",
            digest="86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
            description="Tiny Shakespeare (char-rnn)",
        ),
        Dataset(
            name="timemachine",
            url="http://d2l-data.s3-accelerate.amazonaws.com/timemachine.txt",
            filename="timemachine.txt",
            checksums={
                "sha1": "090b5e7e70c295757f55df93cb0a180b9691891a",
                "sha256": "8424dbd9532ac81f7e5f0b6add90e6952baea29158309d7d1bf3884f4e12c516",
            },
            kind="file",
            target="timemachine.txt",
            digest="8424dbd9532ac81f7e5f0b6add90e6952baea29158309d7d1bf3884f4e12c516",
            description="The Time Machine, H. G. Wells, as in d2l",
        ),
    )
}


# ---------------------------------------------------------------------------
# Where to look
# ---------------------------------------------------------------------------


def cache_dir() -> Path:
    """The download cache: ``COURSE_DATA_DIR`` or ``data/`` at the repository root."""
    env = os.environ.get("COURSE_DATA_DIR", "").strip()
    return Path(env).expanduser().resolve() if env else ROOT / "data"


def mirror_dirs() -> list[Path]:
    """The read-only mirrors named by ``COURSE_DATA_MIRROR`` (relative ones from the repo root)."""
    raw = os.environ.get("COURSE_DATA_MIRROR", "")
    dirs = []
    for part in raw.split(os.pathsep):
        part = part.strip()
        if part:
            p = Path(part).expanduser()
            dirs.append((p if p.is_absolute() else ROOT / p).resolve())
    return dirs


def _offline() -> bool:
    return os.environ.get("COURSE_DATA_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


# ---------------------------------------------------------------------------
# Digests
# ---------------------------------------------------------------------------


def file_digest(path: Path | str, algo: str = "sha256") -> str:
    """Hex digest of one file, read in chunks."""
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _tree_files(root: Path, dirs: Iterable[str]) -> list[tuple[str, Path]]:
    files = []
    for d in dirs:
        folder = root / d
        if not folder.is_dir():
            raise ChecksumError(f"{root}: expected a folder {d}/ inside it, found none")
        for entry in os.scandir(folder):
            if entry.is_file():
                files.append((f"{d}/{entry.name}", Path(entry.path)))
    return files


def tree_digest(root: Path | str, dirs: Iterable[str]) -> str:
    """The tree digest of ``data/README.md``: sha256 over sorted ``relpath\\tsha256\\n`` lines.

    Args:
        root: the dataset root (e.g. ``.../aclImdb``).
        dirs: the sub-folders whose files are counted (e.g. ``("train/pos", ...)``).
    """
    from tqdm.auto import tqdm

    root = Path(root)
    files = list(_tree_files(root, dirs))
    lines = sorted(
        f"{rel}\t{hashlib.sha256(path.read_bytes()).hexdigest()}\n".encode()
        for rel, path in tqdm(files, desc=f"verifying {root.name}", unit=" files", mininterval=1.0,
                              disable=len(files) < 1000)  # a bar only where it takes seconds
    )
    return hashlib.sha256(b"".join(lines)).hexdigest()


def _content_digest(ds: Dataset, path: Path) -> str:
    if ds.digest_dirs:
        return tree_digest(path, ds.digest_dirs)
    if ds.digest_file is not None:
        return file_digest(path / ds.digest_file)
    return file_digest(path)


def _fingerprint(ds: Dataset, path: Path) -> str:
    """Cheap summary of what the digest covers: a hash of mtimes and sizes, no file reads."""
    def stat(p: Path) -> list:
        s = p.stat()
        return [s.st_mtime_ns, s.st_size]

    if ds.digest_dirs:
        items = [[rel, *stat(p)] for rel, p in _tree_files(path, ds.digest_dirs)]
        items += [[d + "/", *stat(path / d)] for d in ds.digest_dirs]
        items.sort()
    elif ds.digest_file is not None:
        items = [stat(path / ds.digest_file)]
    else:
        items = [stat(path)]
    return hashlib.sha256(json.dumps(items).encode()).hexdigest()


def _stamp_file() -> Path:
    return cache_dir() / ".verified.json"


def _read_stamps() -> dict:
    try:
        return json.loads(_stamp_file().read_text())
    except (OSError, ValueError):
        return {}


def _write_stamp(key: str, value: dict) -> None:
    """Record a successful verification (best effort: a read-only cache just skips it)."""
    stamps = _read_stamps()
    stamps[key] = value
    target = _stamp_file()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".verified-", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(stamps, f)
        os.replace(tmp, target)
    except OSError:
        pass


def _check_mode(mode: str) -> None:
    if mode not in ("fast", "full", "none"):
        raise ValueError(f"verify must be 'fast', 'full' or 'none', got {mode!r}")


def _stamp_key(ds: Dataset, path: Path) -> str:
    return f"{ds.name}:{path.resolve()}"


def _stamped_fingerprint(ds: Dataset, path: Path) -> str | None:
    """The fingerprint of ``path`` (None when it cannot be taken, e.g. a folder is missing)."""
    try:
        return _fingerprint(ds, path)
    except (OSError, ChecksumError):
        return None


def _is_stamped(ds: Dataset, path: Path) -> bool:
    """Whether a successful check of ``path`` is on record and the path has not changed since."""
    fingerprint = _stamped_fingerprint(ds, path)
    stamp = _read_stamps().get(_stamp_key(ds, path))
    return fingerprint is not None and stamp == {"digest": ds.digest, "fingerprint": fingerprint}


def verify_path(ds: Dataset, path: Path, mode: str = "fast") -> None:
    """Check ``path`` holds dataset ``ds``; raise ``ChecksumError`` naming both digests if not.

    Args:
        mode: ``"full"`` hashes everything; ``"fast"`` skips hashing when a stamp
            for this path and the same fingerprint (mtimes and sizes) exists;
            ``"none"`` checks nothing.
    """
    _check_mode(mode)
    if mode == "none":
        return
    key = _stamp_key(ds, path)
    fingerprint = None
    if mode == "fast":
        fingerprint = _stamped_fingerprint(ds, path)
        if fingerprint is not None and _read_stamps().get(key) == {"digest": ds.digest, "fingerprint": fingerprint}:
            return
    actual = _content_digest(ds, path)
    if actual != ds.digest:
        what = "tree digest" if ds.digest_dirs else "sha256"
        raise ChecksumError(
            f"{ds.name}: content of {path} does not match the registry: expected {what} "
            f"{ds.digest}, got {actual}. Delete or replace it (it may be incomplete or a different version)."
        )
    if fingerprint is None:
        fingerprint = _fingerprint(ds, path)
    _write_stamp(key, {"digest": ds.digest, "fingerprint": fingerprint})


# ---------------------------------------------------------------------------
# Download and extraction
# ---------------------------------------------------------------------------


def _urlopen(url: str, timeout: float = 60.0):  # noqa: ANN202 - tests replace this
    """Open ``url`` (a seam: tests monkeypatch it to serve files without a network)."""
    return urllib.request.urlopen(url, timeout=timeout)


def _check_archive(ds: Dataset, path: Path) -> None:
    for algo, expected in ds.checksums.items():
        actual = file_digest(path, algo)
        if actual != expected:
            raise ChecksumError(
                f"{ds.name}: checksum mismatch for {path}: expected {algo} {expected}, got {actual}. "
                f"The file is incomplete or not the one at {ds.url}."
            )


def _verify_file(ds: Dataset, path: Path, mode: str) -> None:
    """Check a single-file dataset, which is its own archive (see the module docstring).

    Its archive checksums and content digest are checked unless ``mode`` is
    ``"fast"`` or ``"none"`` and a stamp says this very file passed before: a
    file put in place by hand has no stamp, so it is always checked once.
    """
    _check_mode(mode)
    if mode != "full" and _is_stamped(ds, path):
        return
    _check_archive(ds, path)
    verify_path(ds, path, "full")  # content digest, then the stamp


def _download(ds: Dataset, dest: Path, progress: bool = True) -> None:
    """Download ``ds.url`` to ``dest`` via ``dest.part``; verify before the rename."""
    from tqdm.auto import tqdm

    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, _urlopen(ds.url) as resp:
            total = resp.headers.get("Content-Length") if getattr(resp, "headers", None) else None
            with tqdm(
                total=int(total) if total else None, unit="B", unit_scale=True,
                desc=f"download {ds.filename}", disable=not progress,
            ) as bar:
                while chunk := resp.read(_CHUNK):
                    out.write(chunk)
                    bar.update(len(chunk))
            if total and out.tell() != int(total):
                raise DataError(
                    f"{ds.name}: download of {ds.url} was cut short: got {out.tell()} of {total} bytes"
                )
        _check_archive(ds, tmp)
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _extract(ds: Dataset, archive: Path, cache: Path) -> Path:
    """Extract ``archive`` into a temp folder in ``cache``, verify, then rename into place."""
    target = cache / ds.target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{Path(ds.target).name}.extract-"))
    from tqdm.auto import tqdm

    try:
        try:
            # one member at a time under a progress bar: IMDB's archive holds 100,000 files, half a minute
            if ds.kind == "tar":
                with tarfile.open(archive) as tf:
                    for member in tqdm(tf, desc=f"extract {ds.filename}", unit=" files", mininterval=1.0):
                        tf.extract(member, tmp, filter="data")
            else:
                with zipfile.ZipFile(archive) as zf:
                    bad = zf.testzip()
                    if bad is not None:
                        raise zipfile.BadZipFile(f"bad CRC for member {bad}")
                    for name in tqdm(zf.namelist(), desc=f"extract {ds.filename}", unit=" files", mininterval=1.0):
                        zf.extract(name, tmp)
        except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, OSError, ValueError) as err:
            if isinstance(err, OSError) and err.errno is not None:
                raise  # disk full, permissions: not the archive's fault
            raise DataError(
                f"{ds.name}: cannot extract {archive}: the archive is truncated or corrupt "
                f"({type(err).__name__}: {err}). Delete it and download it again from {ds.url}."
            ) from err
        extracted = tmp / Path(ds.target).name
        if not extracted.exists():
            found = sorted(p.name for p in tmp.iterdir())
            raise DataError(
                f"{ds.name}: {archive} does not contain {Path(ds.target).name}/ at its top level "
                f"(found {found})"
            )
        verify_path(ds, extracted, "full")
        if target.exists():  # someone else finished first
            return target
        os.replace(extracted, target)
        verify_path(ds, target, "fast")  # stamp the final path
        return target
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _not_found(ds: Dataset, cache: Path, mirrors: list[Path], reason: str) -> DatasetNotFoundError:
    where = "\n".join(f"  - {m / ds.target}" for m in mirrors) or "  (COURSE_DATA_MIRROR is not set)"
    hand = (
        f"download it and save it as {cache / ds.filename}"
        if ds.kind == "file"
        else f"download it and either put the archive at {cache / ds.filename} or extract it so that "
        f"{cache / ds.target}/ exists"
    )
    return DatasetNotFoundError(
        f"dataset {ds.name!r} ({ds.description}) is not available: {reason}\n"
        f"It comes from {ds.url}\n"
        f"To fix it, either {hand},\n"
        f"or point COURSE_DATA_MIRROR (an {os.pathsep!r}-separated list of folders) at a read-only copy "
        f"laid out as {ds.target} (or holding {ds.filename}). Looked in:\n  - {cache / ds.target}\n{where}"
    )


def fetch(
    name: str,
    *,
    verify: str = "fast",
    download: bool = True,
    progress: bool = True,
    registry: dict[str, Dataset] | None = None,
) -> Path:
    """Return the local path of dataset ``name``, fetching it if needed.

    Args:
        name: a key of ``REGISTRY`` (``"imdb"``, ``"fra-eng"``, ``"tinyshakespeare"``, ``"timemachine"``).
        verify: ``"fast"`` (cached verification, see the module docstring),
            ``"full"`` or ``"none"``.
        download: allow a download (also switched off by ``COURSE_DATA_OFFLINE=1``).
        progress: show a progress bar while downloading.
        registry: look ``name`` up here instead of ``REGISTRY`` (for tests).

    Returns:
        The dataset's folder (``.../aclImdb``) or file (``.../timemachine.txt``).

    Raises:
        KeyError: unknown name.
        ChecksumError: a file or folder found does not match its digest, or an archive
            (or a single-file dataset) found or downloaded does not match its checksums.
        DataError: an archive is truncated or corrupt.
        DatasetNotFoundError: offline and nothing found; the message says where to put it.
    """
    reg = REGISTRY if registry is None else registry
    if name not in reg:
        raise KeyError(f"unknown dataset {name!r}; known: {sorted(reg)}")
    _check_mode(verify)
    ds = reg[name]
    cache = cache_dir()
    mirrors = mirror_dirs()
    check = _verify_file if ds.kind == "file" else verify_path

    for root in (cache, *mirrors):
        candidate = root / ds.target
        if candidate.exists():
            check(ds, candidate, verify)
            return candidate

    archive = cache / ds.filename
    if not archive.exists():  # an archive put in a mirror by hand: checked, extracted into the cache
        archive = next((m / ds.filename for m in mirrors if (m / ds.filename).is_file()), archive)
    downloaded = False
    if not archive.exists():
        if not download or _offline():
            raise _not_found(ds, cache, mirrors, "downloads are switched off (COURSE_DATA_OFFLINE or download=False)")
        try:
            _download(ds, archive, progress=progress)
        except (urllib.error.URLError, OSError) as err:
            if isinstance(err, DataError):
                raise
            raise _not_found(ds, cache, mirrors, f"the download failed ({err})") from err
        downloaded = True
    elif ds.kind != "file":
        _check_archive(ds, archive)  # placed by hand: checked in every verify mode

    if ds.kind == "file":
        _verify_file(ds, archive, verify)  # archive checksums too, unless stamped
        return archive
    target = _extract(ds, archive, cache)
    if downloaded:
        archive.unlink(missing_ok=True)  # keep the cache small; an archive put there by hand stays
    return target


# ---------------------------------------------------------------------------
# Images for the Vision Transformer (lesson 08): Fashion-MNIST (IDX files) and
# scikit-learn's digits (offline, with a fixed stratified split)
# ---------------------------------------------------------------------------

_FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
# (split, part) -> (file name, md5 from the dataset's README, sha256). The md5 sums are the
# canonical ones (../shared/data/README.md) and are what ``load_fashion_mnist`` checks; the
# sha256 sums (the registry's content digest) come from a third-party loader and were not
# re-checked here, since these machines have no copy of the files.
_FASHION_FILES = {
    ("train", "images"): ("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                          "08dc20ab1689590a0bcd66e874647b6ee8464e2d501b5a3f1f78831db19a3fdc"),
    ("train", "labels"): ("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe",
                          "b0197879cbda89f3dc7b894f9fd52b858e68ea4182b6947c9d8c2b67e5f18dcc"),
    ("test", "images"): ("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79",
                         "78dcbbfb5a27efaf1b6c1d616caca68560be8766c5bffcb2791df9273a534229"),
    ("test", "labels"): ("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310",
                         "42bd18137a62d5998cdeae52bf3a0676ac6b706f5cf8439b47bb5b151ae3dccf"),
}
for (_split, _part), (_file, _md5, _sha256) in _FASHION_FILES.items():
    REGISTRY[f"fashion-mnist-{_split}-{_part}"] = Dataset(
        name=f"fashion-mnist-{_split}-{_part}",
        url=_FASHION_URL + _file,
        filename=f"fashion-mnist/{_file}",
        checksums={"md5": _md5},
        kind="file",
        target=f"fashion-mnist/{_file}",
        digest=_sha256,
        description=f"Fashion-MNIST (Xiao, Rasul and Vollgraf 2017), {_split} {_part}, IDX format, gzipped",
    )
del _split, _part, _file, _md5, _sha256

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)

# IDX type byte -> numpy dtype (big-endian), as in LeCun's MNIST page
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path | str):  # noqa: ANN201 - returns numpy.ndarray (numpy imported lazily)
    """Read an IDX file (MNIST's format), gzipped or not, into a numpy array.

    The format: two zero bytes, a type byte (0x08 uint8, 0x09 int8, 0x0B int16,
    0x0C int32, 0x0D float32, 0x0E float64), the number of dimensions, each size
    as a big-endian int32, then the values in C order, big-endian.

    Raises:
        DataError: a bad header, an unknown type, or a size that does not match the header.
    """
    import gzip

    import numpy as np

    path = Path(path)
    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    try:
        with (gzip.open(path, "rb") if gz else open(path, "rb")) as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"{path}: cannot read the gzip stream ({type(err).__name__}: {err})") from err
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{path}: not an IDX file (expected magic bytes 00 00 <type> <ndim>, got {raw[:4].hex(' ')})")
    if raw[2] not in _IDX_DTYPES:
        raise DataError(f"{path}: unknown IDX type byte 0x{raw[2]:02x}; known: {sorted(hex(k) for k in _IDX_DTYPES)}")
    dtype, ndim = np.dtype(_IDX_DTYPES[raw[2]]), raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header: {ndim} dimensions need {header} bytes, the file has {len(raw)}")
    shape = tuple(int(s) for s in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(
            f"{path}: the header promises shape {shape} of {dtype.name} ({expected} bytes of data), "
            f"but the file has {len(raw) - header}"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def load_fashion_mnist(split: str = "train", *, download: bool = True, progress: bool = True):  # noqa: ANN201
    """Fashion-MNIST images (N, 28, 28) uint8 and labels (N,) int64, as numpy arrays.

    Found like every dataset (cache, ``COURSE_DATA_MIRROR``, a file placed by hand,
    a download); each file is checked against its canonical md5 sum.

    Args:
        split: ``"train"`` (60,000) or ``"test"`` (10,000).

    Raises:
        DatasetNotFoundError: offline and not found; the message names the URL and where to put the file.
        ChecksumError: a file found does not have the canonical md5 sum.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    arrays = {}
    for part in ("images", "labels"):
        ds = REGISTRY[f"fashion-mnist-{split}-{part}"]
        path = fetch(ds.name, verify="none", download=download, progress=progress)
        _check_archive(ds, path)
        arrays[part] = read_idx(path)
    images, labels = arrays["images"], arrays["labels"].astype("int64")
    if images.ndim != 3 or labels.shape != images.shape[:1]:
        raise DataError(f"Fashion-MNIST {split}: images {images.shape} and labels {labels.shape} do not pair up")
    return images, labels


def load_digits_split(test_size: float = 0.25, seed: int = 0):  # noqa: ANN201
    """scikit-learn's 8 x 8 digits (1,797 images, offline) with a fixed stratified train/test split.

    Pixel values 0..16 are scaled to [0, 1].  The split keeps each class's share in
    both parts (``train_test_split(stratify=y, random_state=seed)``).

    Returns:
        ``(x_train, y_train, x_test, y_test)``: float32 images (N, 1, 8, 8) and int64 labels (N,),
        as torch tensors.
    """
    import torch
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (N, 1, 8, 8)
    y = torch.tensor(digits.target, dtype=torch.int64)  # (N,)
    train_idx, test_idx = train_test_split(
        list(range(len(y))), test_size=test_size, random_state=seed, stratify=digits.target
    )
    train_idx, test_idx = torch.tensor(train_idx), torch.tensor(test_idx)
    return x[train_idx], y[train_idx], x[test_idx], y[test_idx]
