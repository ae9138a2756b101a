"""Saving and loading arrays, models and optimizer state as .npz files.

Why .npz: it is NumPy's own zip of .npy files, readable anywhere NumPy is,
and loading it with `allow_pickle=False` can never run code (a pickle can).
Everything stored here is a plain numeric or string array; the optional
metadata (any JSON value: configuration, vocabulary size, epoch, ...) is kept
as a JSON string in a 0-d unicode array under the key "__meta__".

Writes are atomic (`atomic_write`, also used for the project's JSON and PNG
files): the file is written under a temporary name in the same folder,
flushed to disk (fsync), then renamed over the target with `os.replace`. A
crash or error at any point before the rename leaves the previous file
untouched; a reader never sees a half-written file. Only a process killed
outright (kill -9, power loss) leaves its temporary file behind:
`remove_stale_temporaries`, run when a program starts, removes those.

A model file made by `save_model` holds the module's `state_dict()` under
keys "param/<dotted name>" and, when given, the optimizer's `state_dict()`
under "optim/<key>".
"""
import contextlib
import errno
import json
import math
import os
import re
import tempfile
import zipfile

import numpy

from . import backend

__all__ = ["save_npz", "load_npz", "save_model", "load_model", "compare_named_shapes", "check_parameter_values",
           "non_finite_arrays", "META_KEY", "NpzFormatError", "atomic_write", "remove_stale_temporaries", "naming_the_file"]

META_KEY = "__meta__"
# numpy.savez's own keyword arguments: arrays of these names would collide with them.
_SAVEZ_KEYWORDS = ("file", "allow_pickle")


class NpzFormatError(ValueError):
    """A file that is not a readable .npz archive without pickled objects."""
FORMAT = "nn.persist/1"


def compare_named_shapes(expected, found):
    """Compare two name -> shape mappings, e.g. a model's parameters and a saved state.

    Inputs:
    - expected, found: dicts name -> array, or name -> shape tuple
    Returns a tuple of:
    - missing: sorted names in `expected` but not in `found`
    - unexpected: sorted names in `found` but not in `expected`
    - mismatched: sorted list of (name, expected shape, found shape) where both have the name
    Every loader that checks names and shapes before copying uses this, each
    wording its own error message.
    """
    def shape(value):
        return tuple(getattr(value, "shape", value))

    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    mismatched = [(name, shape(expected[name]), shape(found[name]))
                  for name in sorted(set(expected) & set(found))
                  if shape(expected[name]) != shape(found[name])]
    return missing, unexpected, mismatched


def check_parameter_values(arrays):
    """Refuse saved values no trained model holds: a non-float dtype, NaN or inf.

    Inputs:
    - arrays: dict name -> array (NumPy or CuPy), e.g. a state dict read from a file
    Raises ValueError naming the first bad array. Why refuse rather than cast or
    load: an integer array cast to float has lost its fractions (a damaged or
    foreign file), and one NaN weight turns every output into NaN, so a model
    would caption garbage (or training "diverge") with no word of the cause.
    """
    for name, value in arrays.items():
        dtype = getattr(value, "dtype", None)
        if dtype is None or dtype.kind != "f":
            raise ValueError(f"array {name!r} has dtype {dtype}, not a floating-point type: "
                             "parameters are floats, so the file is damaged or not made for this model")
    for name, bad in non_finite_arrays(arrays).items():
        raise ValueError(f"array {name!r} holds {bad} non-finite value(s) (NaN or inf) among "
                         f"{arrays[name].size}: the weights are damaged (saved from a diverged run?)")


def non_finite_arrays(arrays):
    """{name: number of NaN/inf values} of the float arrays (NumPy or CuPy) that hold any."""
    counts = {}
    for name, value in arrays.items():
        xp = backend.get_array_module(value)
        bad = int(xp.count_nonzero(~xp.isfinite(value)))
        if bad:
            counts[name] = bad
    return counts


def save_npz(path, arrays, meta=None, compress=False):
    """Write `arrays` (and JSON metadata) to `path` atomically.

    Inputs:
    - path: file name (str or os.PathLike); ".npz" is NOT appended
    - arrays: dict str -> array (NumPy, CuPy or anything numpy.asarray takes);
      copied to NumPy; object arrays are refused (they would need pickle)
    - meta: optional JSON-serialisable value stored under "__meta__"
    - compress: zip-deflate the arrays (smaller, slower)
    Returns: the path written.
    """
    path = os.fspath(path)
    to_write = {}
    for key, value in arrays.items():
        if not isinstance(key, str) or not key:
            raise TypeError(f"save_npz({path}): array names must be non-empty strings, got {key!r}")
        if key == META_KEY:
            raise ValueError(f"save_npz({path}): {META_KEY!r} is reserved for the metadata")
        if key in _SAVEZ_KEYWORDS:
            raise ValueError(f"save_npz({path}): {key!r} cannot be an array name "
                             "(it is a keyword argument of numpy.savez)")
        array = backend.to_numpy(value)
        if array.dtype == object:
            raise TypeError(f"save_npz({path}): array {key!r} has dtype object, which needs pickle")
        to_write[key] = array
    if meta is not None:
        try:
            text = json.dumps(meta, sort_keys=True, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"save_npz({path}): meta is not JSON-serialisable: {exc}") from exc
        to_write[META_KEY] = numpy.array(text)  # 0-d unicode array: no pickle needed

    writer = numpy.savez_compressed if compress else numpy.savez
    with atomic_write(path, "wb") as f:
        writer(f, **to_write)
    return path


@contextlib.contextmanager
def atomic_write(path, mode="wb", encoding=None):
    """`with atomic_write(path) as f: ...` writes `path` all or nothing.

    f is a temporary file in the same folder; when the block ends without an
    error it is flushed to disk and renamed over `path` (os.replace), else it
    is removed and `path` stays as it was. Permissions are the usual
    rw-r--r-- (minus umask), not the owner-only ones of a temporary file.
    mode: "wb" or "w" (text, then give an encoding).
    A symlink at `path` is followed (its target is replaced); a device, pipe or
    socket at `path` is refused (FileExistsError), never replaced by a file.
    """
    path = os.fspath(path)
    # A symlink is followed: its target is what gets replaced, and the link stays a link.
    path = os.path.realpath(path) if os.path.islink(path) else path
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"folder {folder} does not exist (writing {path})")
    if os.path.isdir(path):
        raise IsADirectoryError(errno.EISDIR, "a folder is where the file should go", path)
    if os.path.exists(path) and not os.path.isfile(path):
        # os.replace would put a plain file in place of a device such as /dev/null, a pipe or a socket
        raise FileExistsError(errno.EEXIST, "not a regular file (a device, pipe or socket): "
                                            "give the name of a file to write", path)
    try:
        # .<name>.<pid>.<random>.tmp: the process id tells remove_stale_temporaries whether
        # the writer is still alive
        fd, tmp_path = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.{os.getpid()}.",
                                        suffix=".tmp")
    except OSError as exc:   # name the file the caller asked for, not our temporary one
        raise OSError(exc.errno, f"cannot write in {folder} ({exc.strerror})", path) from None
    try:
        with os.fdopen(fd, mode, encoding=encoding) as f:
            _set_default_permissions(f.fileno())
            with naming_the_file(path):     # e.g. a full disk: say which file could not be written
                yield f
                f.flush()
                os.fsync(f.fileno())
        try:
            os.replace(tmp_path, path)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot replace it ({exc.strerror})", path) from None
    except BaseException:
        try:
            os.unlink(tmp_path)
        except OSError:
            pass
        raise
    _fsync_folder(folder)


@contextlib.contextmanager
def naming_the_file(path, doing="cannot write it"):
    """`with naming_the_file(path): ...` re-raises an OSError that names no file (a write on a
    full disk: "[Errno 28] No space left on device") as the same error naming `path`.

    doing: what failed, put before the system's reason (e.g. "cannot write it (No space ...)").
    """
    try:
        yield
    except OSError as exc:
        if exc.filename is not None or exc.errno is None:
            raise
        raise OSError(exc.errno, f"{doing} ({exc.strerror})", os.fspath(path)) from None


def remove_stale_temporaries(paths):
    """Remove the temporary files that `atomic_write` of `paths` left behind when its process
    was killed before the rename; those of another process still running are kept. Call it
    before this process writes `paths` (a temporary file with its own process id counts as
    stale: in a container a restarted program often gets the id of the killed one).

    Inputs:
    - paths: the files written with atomic_write (a path, or a list of them)
    Returns: the list of removed files.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    removed = []
    for path in paths:
        folder, name = os.path.split(os.path.abspath(os.fspath(path)))
        pattern = re.compile(re.escape(f".{name}.") + r"(\d+)\.[^.]+\.tmp")
        try:
            entries = os.listdir(folder)
        except OSError:   # no folder: nothing left behind
            continue
        for entry in entries:
            match = pattern.fullmatch(entry)
            if match and not _process_alive(int(match.group(1))):
                try:
                    os.unlink(os.path.join(folder, entry))
                    removed.append(os.path.join(folder, entry))
                except OSError:
                    pass
    return removed


def _process_alive(pid):
    """Whether another process `pid` runs (True when unsure: a live writer's file must stay)."""
    if pid == os.getpid():
        return False
    if os.name == "nt":                          # there os.kill would end the process
        return True
    try:
        os.kill(pid, 0)                          # signal 0: only checks that the process exists
    except ProcessLookupError:
        return False
    except OSError:                              # e.g. another user's process
        return True
    return True


def _set_default_permissions(fd):
    """mkstemp makes files readable by their owner only; give the usual rw-r--r-- (minus umask)."""
    if not hasattr(os, "fchmod"):
        return
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)


def _fsync_folder(folder):
    """Make the rename itself durable (best effort; not possible on Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_npz(path):
    """Read a file written by `save_npz` (or any .npz without pickled objects).

    Inputs:
    - path: file name
    Returns: (arrays, meta): dict str -> NumPy array, and the metadata (None
    when the file has none).
    Raises FileNotFoundError when missing, NpzFormatError (a ValueError) when
    not a readable .npz, when it holds pickled objects, or when a member
    claims more than the file can hold (checked before allocating it).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"load_npz: no such file: {path}")
    if not zipfile.is_zipfile(path):   # numpy.load would take any other file for a pickle
        raise NpzFormatError(f"load_npz: {path} is not an .npz file (not a zip archive)")
    try:
        arrays = _read_npz_members(path)
    except (ValueError, OSError, zipfile.BadZipFile, EOFError, NotImplementedError) as exc:
        # NotImplementedError: zipfile's word for a compression method or flag it cannot read
        raise NpzFormatError(f"load_npz: {path} is not a readable .npz file without pickles: {exc}") from exc
    meta = None
    if META_KEY in arrays:
        try:
            meta = json.loads(str(arrays.pop(META_KEY)))
        except ValueError as exc:
            raise NpzFormatError(f"load_npz: {path} has corrupt metadata: {exc}") from exc
    return arrays, meta


# How far a member may expand beyond its compressed size (plus NPZ_EXPANSION_SLACK bytes,
# for small members): real arrays compress little, and a "zip bomb" of a few megabytes
# must not make load_npz allocate and fill gigabytes before it finds out.
NPZ_MAX_EXPANSION = 16
NPZ_EXPANSION_SLACK = 1 << 20
_CHUNK = 1 << 24   # bytes read at a time into an array


def _read_npz_members(path):
    """name -> array of every .npy member (what numpy.load(path, allow_pickle=False) gives).

    Read by hand rather than with numpy.load, to check each member before its array
    is allocated: ValueError for a member that is no .npy array, holds objects
    (pickles), claims more bytes than it holds, or expands out of proportion to
    its compressed size.
    """
    arrays = {}
    with zipfile.ZipFile(path) as archive:
        infos = archive.infolist()
        others = [info.filename for info in infos if not info.filename.endswith(".npy")]
        if others:
            raise ValueError(f"it holds files that are not arrays: {others[:3]}")
        for info in infos:
            if info.flag_bits & 0x1:   # zipfile would ask for a password (RuntimeError)
                raise ValueError(f"member {info.filename} is encrypted")
            if info.file_size > NPZ_MAX_EXPANSION * info.compress_size + NPZ_EXPANSION_SLACK:
                raise ValueError(f"member {info.filename} would expand from {info.compress_size} to "
                                 f"{info.file_size} bytes (a zip bomb?)")
            with archive.open(info) as f:
                shape, fortran, dtype = _read_npy_header(f, info.filename)
                if dtype.hasobject:
                    raise ValueError(f"member {info.filename} holds Python objects, which need pickle")
                if min(shape, default=0) < 0:
                    raise ValueError(f"member {info.filename} has a negative size in its shape {shape}")
                count = math.prod(shape)
                need = f.tell() + dtype.itemsize * count
                if need > info.file_size:
                    raise ValueError(f"member {info.filename} claims a {dtype} array of shape {shape} "
                                     f"({need} bytes) but holds {info.file_size} bytes")
                flat = numpy.empty(count, dtype=dtype)
                _read_into(f, flat.view(numpy.uint8) if flat.nbytes else flat[:0], info.filename)
            # Fortran order: the bytes are the transpose's, in C order
            arrays[info.filename[:-len(".npy")]] = (flat.reshape(shape[::-1]).transpose() if fortran
                                                    else flat.reshape(shape))
    return arrays


def _read_npy_header(f, name):
    """(shape, fortran_order, dtype) of the .npy file f; ValueError when unreadable."""
    try:
        version = numpy.lib.format.read_magic(f)
        readers = {(1, 0): numpy.lib.format.read_array_header_1_0,
                   (2, 0): numpy.lib.format.read_array_header_2_0}
        if version not in readers:
            raise ValueError(f".npy format {version} is not 1.0 or 2.0")
        return readers[version](f)
    except (zipfile.BadZipFile, NotImplementedError, OSError):
        raise
    except Exception as exc:   # damaged header text: NumPy's parser raises SyntaxError, TokenError, ...
        raise ValueError(f"member {name} has no readable .npy header ({type(exc).__name__}: {exc})") from None


def _read_into(f, out, name):
    """Fill the uint8 array `out` from f, a chunk at a time (no second copy of a large array)."""
    done = 0
    while done < len(out):
        chunk = f.read(min(_CHUNK, len(out) - done))
        if not chunk:
            raise ValueError(f"member {name} is truncated")
        out[done:done + len(chunk)] = numpy.frombuffer(chunk, dtype=numpy.uint8)
        done += len(chunk)


def save_model(path, module, optimizer=None, meta=None, compress=False):
    """Save a module's parameters and buffers (and optimizer state) atomically.

    Inputs:
    - path: file name
    - module: an nn.layers.Module (anything with state_dict())
    - optimizer: optional nn.optim optimizer; its state_dict() is stored too
    - meta: optional JSON-serialisable value (configuration, epoch, ...)
    Returns: the path written.
    """
    arrays = {"param/" + name: value for name, value in module.state_dict().items()}
    if optimizer is not None:
        arrays.update({"optim/" + key: value for key, value in optimizer.state_dict().items()})
    record = {
        "format": FORMAT,
        "module": type(module).__name__,
        "optimizer": None if optimizer is None else type(optimizer).__name__,
        "meta": meta,
    }
    return save_npz(path, arrays, meta=record, compress=compress)


def load_model(path, module, optimizer=None, strict=True):
    """Load a file written by `save_model` into `module` (and `optimizer`).

    The module keeps its backend and dtypes; values are copied into its
    arrays. Names and shapes are checked first: a mismatch raises ValueError
    naming the file and listing the missing, unexpected and mismatched
    entries, and nothing is changed. With strict=False, missing and
    unexpected names are allowed (shapes must still match).

    Returns: the `meta` value given to save_model (None if none).
    """
    path = os.fspath(path)
    arrays, record = load_npz(path)
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ValueError(f"load_model: {path} was not written by nn.persist.save_model "
                         f"(no {FORMAT!r} record in its metadata)")
    params = {key[len("param/"):]: value for key, value in arrays.items() if key.startswith("param/")}
    optim = {key[len("optim/"):]: value for key, value in arrays.items() if key.startswith("optim/")}
    if optimizer is not None:
        saved_kind = record.get("optimizer")
        if saved_kind is None:
            raise ValueError(f"load_model: {path} holds no optimizer state "
                             f"(asked to restore a {type(optimizer).__name__})")
        if saved_kind != type(optimizer).__name__:
            raise ValueError(f"load_model: {path} holds {saved_kind} state, "
                             f"cannot restore it into {type(optimizer).__name__}")
    try:
        if optimizer is not None:
            # Check the module's names and shapes, then load the optimizer (which
            # validates everything before changing anything), then the module:
            # a mismatch in either leaves both untouched.
            check = getattr(module, "check_state_dict", None)
            if check is not None:
                check(params, strict=strict)
            optimizer.load_state_dict(optim)
        module.load_state_dict(params, strict=strict)
    except ValueError as exc:
        raise ValueError(f"load_model: {path}: {exc}") from exc
    return record.get("meta")
