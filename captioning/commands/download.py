"""`python -m captioning download`: fetch Flickr8k into the original layout."""
import os
import sys

from ..cli import UsageError, check_outputs
from ..data.download import ARCHIVES, DEFAULT_URL_BASE, DownloadError, download_flickr8k
from ..data.flickr8k import load_flickr8k

HELP = "download Flickr8k (images and captions) and unpack it"
DESCRIPTION = f"""\
Download Flickr8k_Dataset.zip (about 1 GB) and Flickr8k_text.zip from
{DEFAULT_URL_BASE}
and unpack them into DEST/Flicker8k_Dataset/ and DEST/Flickr8k_text/.

An interrupted download resumes when the same command runs again. Each archive
is checked against the size the server announced and the CRC of every member;
its SHA-256 is printed. Afterwards the data set is read once and its counts shown.

examples:
  python -m captioning download --dest ~/data/flickr8k
  export FLICKR8K_DIR=~/data/flickr8k   # then every command finds it
"""


def add_arguments(parser):
    parser.add_argument("--dest", required=True, help="folder to put the data set in (created if needed)")
    parser.add_argument("--url-base", default=DEFAULT_URL_BASE,
                        help="where the two zip files are (a mirror); default: %(default)s")
    parser.add_argument("--keep-archives", action="store_true", help="keep the zip files after unpacking")
    parser.add_argument("--timeout", type=float, default=30, help="network timeout in seconds (default 30)")


def _check_not_the_mirror(dest, url_base):
    """A file:// mirror is read: its archives must not be the ones downloaded into (and, once
    unpacked, deleted from) --dest."""
    from urllib.parse import urlparse
    from urllib.request import url2pathname

    url = urlparse(url_base)
    if url.scheme != "file":
        return
    mirror = url2pathname(url.path)
    check_outputs([("--dest", os.path.join(dest, name)) for name in ARCHIVES],
                  [("the archive of --url-base", os.path.join(mirror, name)) for name in ARCHIVES])


def run(args):
    import math
    from urllib.parse import urlparse

    if not (math.isfinite(args.timeout) and args.timeout > 0):
        raise UsageError(f"--timeout must be a number of seconds > 0, got {args.timeout}")
    if urlparse(args.url_base).scheme not in ("http", "https", "file"):
        raise UsageError(f"--url-base must be an http://, https:// or file:// address, got {args.url_base!r}")
    if os.path.exists(args.dest) and not os.path.isdir(args.dest):
        raise UsageError(f"--dest {args.dest} is a file; give a folder")
    _check_not_the_mirror(args.dest, args.url_base)
    try:
        download_flickr8k(args.dest, url_base=args.url_base, keep_archives=args.keep_archives,
                          timeout=args.timeout)
    except DownloadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    data = load_flickr8k(args.dest)
    print(data.report)
    print(f"done: use --data {args.dest} or export FLICKR8K_DIR={args.dest}")
    return 0
