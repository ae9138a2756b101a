"""Files whose disk space is taken up front: a full disk is an error naming the file, never a crash.

Arrays written through a memory map (the feature cache) die with SIGBUS, no
message, when the disk has no room for a page they touch. So the space of
such a file is reserved when it is made (posix_fallocate, where the file
system has it), and a full disk is then an OSError naming the file.
"""
import errno
import os

import numpy as np

from nn.persist import naming_the_file

__all__ = ["allocated_bytes", "reserve_disk", "create_npy"]


def allocated_bytes(path):
    """Disk space a file holds now (a sparse file holds less than its size); 0 if absent."""
    try:
        return os.stat(path).st_blocks * 512
    except (OSError, AttributeError):   # absent, or no st_blocks (Windows)
        return 0


def reserve_disk(path, what):
    """Allocate the whole file on disk now (posix_fallocate), so that rows written later through
    the memmap cannot hit a full disk (SIGBUS); a full disk is an OSError naming `path` instead.
    what: what the file is, for that message (e.g. "the feature cache")."""
    if not hasattr(os, "posix_fallocate"):
        return
    fd = os.open(path, os.O_RDWR)
    try:
        with naming_the_file(path, f"cannot reserve disk space for {what}"):
            os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):   # a file system without it
            raise
    finally:
        os.close(fd)


def create_npy(path, shape, dtype, what):
    """An .npy file of `shape` with its disk space reserved (OSError naming `path` if it fails)."""
    try:
        with naming_the_file(path, f"cannot write {what}"):
            # open_memmap writes the .npy header and a sparse file of the full size
            array = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
            array.flush()
            del array
        reserve_disk(path, what)
    except OSError:
        path.unlink(missing_ok=True)     # a full disk: give back what the file took
        raise
