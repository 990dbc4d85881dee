"""Downloading a preset dataset from its official source into the user cache.

:func:`download_preset` is what :func:`blossom_hf.data.presets.resolve_preset` calls when a preset is not on
disk. It

1. checks the terms: where they need consent (MovieLens) and none was given (``accept_license=True``,
   ``--accept-license``, or ``$BLOSSOM_ACCEPT_LICENSE`` naming the licence or the preset, or ``1``/``yes``/``all``),
   it raises :class:`LicenseConsentRequired` with the licence line; with consent it logs the licence line;
2. refuses to touch the network when ``$BLOSSOM_OFFLINE``, ``$HF_HUB_OFFLINE`` or ``$HF_DATASETS_OFFLINE`` is set;
3. streams the file (``$BLOSSOM_DATASETS_MIRROR``, if set, replaces the official host: ``<mirror>/<filename>``)
   into a temporary file beside its destination, with a tqdm progress bar, hashing as it goes;
4. checks the size and the SHA-256 (and the MD5 where one is published), and only then
5. extracts a zip into a temporary folder and moves each file into place with an atomic rename, the
   layout's interaction file last -- so a preset file that exists is always complete and verified.

A lock file per preset keeps two processes from downloading the same dataset at once. Every failure is a
one-line exception naming the problem and the fix; nothing half-written is left behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import logging
import os
import shutil
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import IO

from filelock import FileLock
from tqdm.auto import tqdm

from .presets import ACCEPT_LICENSE_ENV, MIRROR_ENV, OFFLINE_ENV, DatasetPreset, DownloadSource

logger = logging.getLogger(__name__)

MARKER_FILE = ".blossom_download.json"
_CHUNK = 1 << 16
_TRUE = ("1", "true", "yes", "all")
_OFFLINE_VARIABLES = (OFFLINE_ENV, "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
USER_AGENT = "blossom_hf (dataset download; Python urllib)"


class DatasetDownloadError(ValueError):
    """A dataset could not be downloaded (offline, unreachable, damaged)."""


class ChecksumMismatchError(DatasetDownloadError):
    """The downloaded bytes are not the published file (size or digest differ)."""


class LicenseConsentRequired(PermissionError):
    """The dataset's terms need the user's explicit consent before it is downloaded."""


def license_accepted(preset: DatasetPreset, accept_license: bool | None = None) -> bool:
    """Whether the user consented to ``preset``'s terms (argument, else ``$BLOSSOM_ACCEPT_LICENSE``)."""
    if not preset.terms.requires_consent:
        return True
    if accept_license is not None:
        return bool(accept_license)
    value = os.environ.get(ACCEPT_LICENSE_ENV, "")
    tokens = {token.strip().lower() for token in value.split(",") if token.strip()}
    return bool(tokens & {*_TRUE, preset.terms.licence_id, preset.name})


def offline_reason() -> str | None:
    """The environment variable that forbids network access, if one is set."""
    for name in _OFFLINE_VARIABLES:
        if os.environ.get(name, "").strip().lower() in _TRUE:
            return f"${name}={os.environ[name]}"
    return None


def source_url(source: DownloadSource) -> str:
    """The URL fetched: the official one, or ``$BLOSSOM_DATASETS_MIRROR/<filename>``."""
    mirror = os.environ.get(MIRROR_ENV)
    if mirror:
        return mirror.rstrip("/") + "/" + source.filename
    return source.url


def download_preset(
    preset: DatasetPreset,
    root: str | os.PathLike,
    *,
    accept_license: bool | None = None,
    progress: bool = True,
    timeout: float = 60.0,
) -> Path:
    """Download ``preset`` into the data folder ``root`` (normally the user cache); return ``root``.

    Raises:
        LicenseConsentRequired: the terms need consent and it was not given.
        DatasetDownloadError: offline, unreachable, HTTP error, or :class:`ChecksumMismatchError`.
    """
    source = preset.download
    if source is None:
        raise DatasetDownloadError(f"dataset preset {preset.name!r} has no download source; place its files yourself")
    root = Path(root)
    url = source_url(source)
    if not license_accepted(preset, accept_license):
        raise LicenseConsentRequired(
            f"downloading {preset.name!r} from {url} needs your consent to its terms -- {preset.terms.line} "
            f"(full text: {preset.terms.url}); rerun with --accept-license, set "
            f"{ACCEPT_LICENSE_ENV}={preset.terms.licence_id}, or run once: blossom-hf datasets download {preset.name} "
            "--accept-license"
        )
    reason = offline_reason()
    if reason:
        raise DatasetDownloadError(
            f"dataset preset {preset.name!r} is not on disk and {reason} forbids downloading it from {url}; "
            f"unset it, or put the files under --data-dir / $BLOSSOM_DATA_DIR"
        )
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / f".{preset.name}.lock")):
        if all((root / path).is_file() for path in source.provides):  # another process finished it meanwhile
            return root
        logger.warning("Downloading %s from %s into %s. %s", preset.name, url, root, preset.terms.line)
        with _staging_dir(root, preset.name) as staging:
            fetched = staging / source.filename
            fetch(url, fetched, source, progress=progress, timeout=timeout)
            if source.archive == "zip":
                extracted = staging / "extracted"
                _extract_zip(fetched, extracted, url)
            elif source.archive is None:
                extracted = staging / "extracted"
                target = extracted / source.provides[0]
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(fetched, target)
            else:
                raise DatasetDownloadError(f"unsupported archive type {source.archive!r} for {preset.name!r}")
            _install(preset, source, url, extracted, root)
    logger.info("Downloaded %s into %s", preset.name, root)
    return root


def fetch(
    url: str,
    destination: str | os.PathLike,
    source: DownloadSource,
    *,
    progress: bool = True,
    timeout: float = 60.0,
) -> Path:
    """Stream ``url`` to ``destination`` (via a temporary file beside it), checking size and checksums.

    The destination appears only when every check passed; on any failure it does not exist.
    """
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    sha256, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    handle, temporary = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=".part", dir=destination.parent)
    try:
        with os.fdopen(handle, "wb") as out, _open_url(url, timeout) as response:
            header = response.headers.get("Content-Length")
            announced = int(header) if header and header.isdigit() else None
            with tqdm(total=announced or source.size, unit="B", unit_scale=True, unit_divisor=1024,
                      desc=source.filename, disable=not progress or None, leave=False) as bar:  # fmt: skip
                size = _copy(response, out, (sha256, md5), bar, url)
            if announced is not None and size < announced:
                raise DatasetDownloadError(
                    f"download of {url} broke off after {size} of {announced} bytes (nothing was saved); retry, "
                    f"or set ${MIRROR_ENV}"
                )
            out.flush()
            os.fsync(out.fileno())
        _verify(url, source, size, sha256.hexdigest(), md5.hexdigest())
        os.replace(temporary, destination)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    return destination


# --------------------------------------------------------------------------------------------------


def _open_url(url: str, timeout: float) -> IO[bytes]:
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    try:
        return urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 (http/https URLs from the registry)
    except urllib.error.HTTPError as error:
        raise DatasetDownloadError(
            f"cannot download {url}: HTTP {error.code} {error.reason}; check the URL or ${MIRROR_ENV}"
        ) from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise DatasetDownloadError(
            f"cannot download {url} ({reason}): offline or unreachable; connect to the network, set ${MIRROR_ENV} to "
            "a reachable copy, or put the files under --data-dir / $BLOSSOM_DATA_DIR"
        ) from None


def _copy(response: IO[bytes], out: IO[bytes], digests: tuple, bar: tqdm, url: str) -> int:
    size = 0
    while True:
        try:
            chunk = response.read(_CHUNK)
        except (OSError, http.client.HTTPException) as error:  # connection dropped or timed out mid-way
            raise DatasetDownloadError(
                f"download of {url} broke off after {size} bytes ({error}); retry, or set ${MIRROR_ENV}"
            ) from None
        if not chunk:
            return size
        out.write(chunk)
        for digest in digests:
            digest.update(chunk)
        size += len(chunk)
        bar.update(len(chunk))


def _verify(url: str, source: DownloadSource, size: int, sha256: str, md5: str) -> None:
    name = source.filename
    if source.size is not None and size != source.size:
        raise ChecksumMismatchError(
            f"checksum mismatch for {name} from {url}: {size} bytes, expected {source.size}; the file is damaged "
            "or not the published one (nothing was saved; retry, or check the source)"
        )
    if source.sha256 is not None and sha256 != source.sha256:
        raise ChecksumMismatchError(
            f"checksum mismatch for {name} from {url}: sha256 {sha256}, expected {source.sha256} (nothing was saved; "
            "retry, or check the source)"
        )
    if source.md5 is not None and md5 != source.md5:
        raise ChecksumMismatchError(
            f"checksum mismatch for {name} from {url}: md5 {md5}, expected {source.md5} (nothing was saved)"
        )
    if source.sha256 is None and source.md5 is None:
        logger.warning("%s has no published checksum; only its size (%s bytes) was checked", name, size)


def _extract_zip(archive: Path, target: Path, url: str) -> None:
    try:
        with zipfile.ZipFile(archive) as bundle:
            for member in bundle.infolist():
                parts = PurePosixPath(member.filename).parts
                if member.filename.startswith("/") or ".." in parts:
                    raise DatasetDownloadError(f"{url}: archive member {member.filename!r} points outside its folder")
            bundle.extractall(target)
    except zipfile.BadZipFile as error:
        raise DatasetDownloadError(f"{url}: not a valid zip archive ({error})") from None


def _install(preset: DatasetPreset, source: DownloadSource, url: str, extracted: Path, root: Path) -> None:
    """Move the downloaded files into ``root`` (atomic renames), the preset's interaction file last."""
    missing = [path for path in source.provides if not (extracted / path).is_file()]
    if missing:
        raise DatasetDownloadError(f"{url} does not contain {', '.join(missing)}; the archive layout has changed")
    main = next((layout.relative_path for layout in preset.layouts if layout.relative_path in source.provides), None)
    if main is None:
        raise DatasetDownloadError(f"{url} provides none of the files of preset {preset.name!r}")
    folder = (root / main).parent
    folder.mkdir(parents=True, exist_ok=True)
    marker = {"preset": preset.name, "url": url, "sha256": source.sha256, "size": source.size,
              "downloaded": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}  # fmt: skip
    (extracted / MARKER_FILE).write_text(json.dumps(marker, indent=2))
    os.replace(extracted / MARKER_FILE, folder / MARKER_FILE)
    files = sorted(p.relative_to(extracted).as_posix() for p in extracted.rglob("*") if p.is_file())
    for path in sorted(files, key=lambda p: p == main):  # every file of the archive; the interaction file last
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(extracted / path, target)


@contextlib.contextmanager
def _staging_dir(root: Path, name: str) -> Iterator[Path]:
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".download", dir=root))
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


__all__ = [
    "ChecksumMismatchError",
    "DatasetDownloadError",
    "LicenseConsentRequired",
    "download_preset",
    "fetch",
    "license_accepted",
    "offline_reason",
    "source_url",
]
