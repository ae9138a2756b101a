"""Fetch Flickr8k and unpack it into the original layout.

The two archives most tutorials use, from Jason Brownlee's public GitHub
release copy of the original University of Illinois files:

    Flickr8k_Dataset.zip  (about 1 GB)  Flicker8k_Dataset/*.jpg (+ __MACOSX/ junk)
    Flickr8k_text.zip     (about 3 MB)  Flickr8k.token.txt, the split lists, ... at the top
                                        level (+ __MACOSX/ junk)

They are unpacked to DEST/Flicker8k_Dataset/ and DEST/Flickr8k_text/, the
original layout `load_flickr8k` reads.

Downloads go to `NAME.part` and resume from where they stopped (an HTTP Range
request) when run again; a server that ignores Range makes us start over.

Verification: no checksum of these files is published with them, and we do
not ship one we could not check, so a download is verified by (1) its size
against the server's Content-Length / Content-Range and (2) the zip's own
CRC-32 of every member (`zipfile.testzip`). The SHA-256 of each archive is
printed so that it can be compared with another copy. A corrupt archive is
renamed to `NAME.corrupt` (so the next run downloads it afresh) and nothing of
it is unpacked.
"""
import hashlib
import os
import shutil
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from nn.persist import naming_the_file

from ..progress import ProgressBar

__all__ = ["DownloadError", "DEFAULT_URL_BASE", "ARCHIVES", "download_flickr8k", "fetch",
           "verify_zip", "extract_archive"]

DEFAULT_URL_BASE = "https://github.com/jbrownlee/Datasets/releases/download/Flickr8k"
# archive name -> the folder its contents go to (the original layout)
ARCHIVES = {"Flickr8k_Dataset.zip": "Flicker8k_Dataset", "Flickr8k_text.zip": "Flickr8k_text"}
CHUNK_BYTES = 1 << 20


class DownloadError(RuntimeError):
    """A download or an archive failed; the message says what to do next."""


def _open(url, offset, timeout):
    """urlopen with a Range header when resuming; network failures -> DownloadError."""
    headers = {"User-Agent": "captioning-download/1"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # nothing after `offset`: the .part is already whole
            return None
        raise DownloadError(f"{url}: the server answered HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DownloadError(f"cannot reach {url} ({reason}). Check the network connection (or the "
                            "proxy / --url-base); run the same command again to resume.") from exc


def _total_size(response, offset):
    """(resume?, total bytes or None) from a 206 Content-Range or a 200 Content-Length."""
    if response.status == 206:
        content_range = response.headers.get("Content-Range", "")  # "bytes START-END/TOTAL"
        start = content_range.split()[-1].split("-")[0] if content_range else ""
        if start != str(offset):
            raise DownloadError(f"{response.url}: the server resumed at {content_range!r}, not at byte {offset}")
        total = content_range.rpartition("/")[2]
        return True, int(total) if total.isdigit() else None
    length = response.headers.get("Content-Length")
    return False, int(length) if length and length.isdigit() else None


def fetch(url, path, progress_stream=None, timeout=30):
    """Download `url` to `path`, resuming `path`.part; returns the path.

    Raises DownloadError when the network fails or the transfer stops short
    (the .part file is kept: running again resumes it).
    """
    path = Path(path)
    if path.exists():
        return path
    part = path.with_name(path.name + ".part")
    offset = part.stat().st_size if part.exists() else 0
    response = _open(url, offset, timeout)
    if response is None:
        os.replace(part, path)
        return path
    with response:
        resume, total = _total_size(response, offset)
        done = offset if resume else 0
        bar = ProgressBar(path.name, total, start=done, unit="B", stream=progress_stream)
        try:
            with open(part, "ab" if resume else "wb") as out:
                while True:
                    chunk = response.read(CHUNK_BYTES)
                    if not chunk:
                        break
                    out.write(chunk)
                    done += len(chunk)
                    bar.update(done)
        except (OSError, urllib.error.URLError, ValueError) as exc:
            raise DownloadError(f"download of {path.name} interrupted at {done} bytes ({exc}); "
                                "run the same command again to resume") from exc
        finally:
            bar.finish()
    if total is not None and done != total:
        raise DownloadError(f"download of {path.name} stopped at {done} of {total} bytes; "
                            "run the same command again to resume")
    os.replace(part, path)
    return path


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_zip(path):
    """Check every member's CRC; a bad archive is renamed NAME.corrupt and DownloadError raised."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            bad_member = archive.testzip()
    except zlib.error as exc:  # damaged compressed data inside a member
        problem = f"damaged compressed data ({exc})"
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        problem = f"not a readable zip archive ({exc})"
    else:
        problem = f"member {bad_member} fails its CRC check" if bad_member else None
    if problem:
        corrupt = path.with_name(path.name + ".corrupt")
        os.replace(path, corrupt)
        raise DownloadError(f"{path.name} is corrupt: {problem}. Moved it to {corrupt.name}; "
                            "run the same command again to download it afresh.")


def _is_junk(name):
    parts = PurePosixPath(name).parts
    return (not parts or parts[0] == "__MACOSX" or parts[-1].startswith("._")
            or parts[-1] == ".DS_Store" or name.endswith("/"))


def _member_targets(names):
    """Member name -> relative output path: junk dropped, one shared top folder stripped."""
    kept = [n for n in names if not _is_junk(n)]
    for name in kept:
        parts = PurePosixPath(name).parts
        if name.startswith("/") or ".." in parts or ":" in parts[0]:
            raise DownloadError(f"archive member {name!r} would land outside the destination; refused")
    tops = {PurePosixPath(n).parts[0] for n in kept}
    strip = len(tops) == 1 and all(len(PurePosixPath(n).parts) > 1 for n in kept)
    return {n: PurePosixPath(*PurePosixPath(n).parts[1 if strip else 0:]) for n in kept}


def extract_archive(zip_path, dest, folder):
    """Unpack `zip_path` into dest/folder (junk left out), all or nothing.

    Members go to a temporary folder inside `dest` that is renamed to `folder`
    once complete. An existing dest/folder is never touched.
    """
    dest, target = Path(dest), Path(dest) / folder
    if target.exists():
        raise DownloadError(f"{target} already exists; not overwriting it")
    staging = Path(tempfile.mkdtemp(prefix=f".{folder}.partial-", dir=dest))
    try:
        with zipfile.ZipFile(zip_path) as archive:
            for name, relative in _member_targets(archive.namelist()).items():
                out_path = staging.joinpath(*relative.parts)
                out_path.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(name) as source, open(out_path, "wb") as out, \
                        naming_the_file(target.joinpath(*relative.parts), f"cannot unpack {name}"):
                    shutil.copyfileobj(source, out, CHUNK_BYTES)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def download_flickr8k(dest, url_base=DEFAULT_URL_BASE, keep_archives=False, progress_stream=None,
                      timeout=30):
    """Download and unpack both archives into `dest` (created if needed).

    A folder already unpacked is left alone (its archive is not fetched).
    Archives are deleted after a successful unpack unless keep_archives.
    Returns a list of (archive name, sha256 or None when skipped, folder).
    """
    stream = progress_stream if progress_stream is not None else sys.stderr
    dest = Path(dest)
    made_dest = not dest.exists()
    dest.mkdir(parents=True, exist_ok=True)
    try:
        return _download_into(dest, url_base, keep_archives, stream, timeout)
    except BaseException:
        if made_dest and not any(dest.iterdir()):   # nothing fetched (e.g. offline): leave no empty folder
            dest.rmdir()
        raise


def _download_into(dest, url_base, keep_archives, stream, timeout):
    results = []
    for name, folder in ARCHIVES.items():
        target = dest / folder
        if target.is_dir() and any(target.iterdir()):
            stream.write(f"{target} already there; skipping {name}\n")
            results.append((name, None, target))
            continue
        zip_path = fetch(f"{url_base.rstrip('/')}/{name}", dest / name, stream, timeout)
        verify_zip(zip_path)
        digest = sha256_of(zip_path)
        stream.write(f"{name}: CRC of every member OK, sha256 {digest}\n")
        if target.is_dir():  # left empty by someone: fill it
            target.rmdir()
        extract_archive(zip_path, dest, folder)
        if not keep_archives:
            zip_path.unlink()
        results.append((name, digest, target))
    return results
