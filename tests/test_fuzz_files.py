"""Fuzzing the readers of checkpoints (.npz) and PyTorch weight files (.pth).

Each test takes a valid file made by the project (a tiny checkpoint built
here; hand-written .pth files as in test_pth.py), damages copies of it at
random (seeded) and loads each copy. Every outcome must be either success or
the project's own error type for a bad file -- never another exception (a
raw MemoryError, KeyError, RecursionError ... would be a traceback for the
user), never a hang, never a large allocation.

Damage: truncation, flipped and overwritten bytes, huge or negative integers
written over the file, and -- since zip members carry a CRC that catches most
flipped bytes -- the same damage to a member's content re-zipped with a valid
CRC, plus damage at the array level (NaN, integer dtypes, wrong shapes,
missing and unexpected names, metadata of the wrong types).
"""
import contextlib
import io
import json
import os
import signal
import struct
import sys
import time
import zipfile

import numpy as np
import pytest

try:
    import resource
except ImportError:   # not on Windows: the memory check is skipped there
    resource = None

from nn.persist import META_KEY, NpzFormatError, load_npz
from captioning.checkpoint import load_checkpoint
from captioning.models import ConfigMismatchError
from captioning.pth import CheckpointError, load_pth, load_state_dict
from captioning.encoders import make_encoder
from tests.test_checkpoint_values import tiny_checkpoint
from tests.test_pth import _example, write_legacy, write_zip

CHECKPOINT_ERRORS = (NpzFormatError, ConfigMismatchError)
PTH_ERRORS = (CheckpointError,)
HUGE = [2 ** 60, 2 ** 33, 2 ** 31 - 1, 2 ** 63 - 1, -5, -1, 0]
SEED = int(os.environ.get("FUZZ_SEED", "2026"))   # fixed; set FUZZ_SEED to explore further
SECONDS_PER_INPUT = 2.0       # far above the few milliseconds each takes: only a hang trips it
MEMORY_GROWTH_MB = 300        # the high-water mark of this process may not rise more than this


# --- byte-level damage ---------------------------------------------------------

def truncate(rng, data):
    return data[:int(rng.integers(0, len(data)))]


def flip_bytes(rng, data):
    out = bytearray(data)
    for at in rng.integers(0, len(out), size=int(rng.integers(1, 9))):
        out[at] ^= 1 << int(rng.integers(0, 8))
    return bytes(out)


def overwrite(rng, data):
    out = bytearray(data)
    at, length = int(rng.integers(0, len(out))), int(rng.integers(1, 64))
    out[at:at + length] = rng.integers(0, 256, size=min(length, len(out) - at), dtype=np.uint8).tobytes()
    return bytes(out)


def huge_number(rng, data):
    """Write a huge, negative or zero integer (4 or 8 bytes, either byte order) somewhere."""
    value = HUGE[int(rng.integers(len(HUGE)))]
    code = str(rng.choice(["<q", ">q", "<i", ">i"]))
    if code.endswith("i"):
        value = max(-2 ** 31, min(value, 2 ** 31 - 1))
    packed = struct.pack(code, value)
    at = int(rng.integers(0, max(len(data) - len(packed), 1)))
    return data[:at] + packed + data[at + len(packed):]


def splice(rng, data):
    """Delete or duplicate a stretch of bytes (shifts everything after it)."""
    at, length = int(rng.integers(0, len(data))), int(rng.integers(1, 32))
    if rng.random() < 0.5:
        return data[:at] + data[at + length:]
    return data[:at] + data[at:at + length] * 2 + data[at + length:]


BYTE_DAMAGE = [truncate, flip_bytes, overwrite, huge_number, splice]


def damage_bytes(rng, data):
    return BYTE_DAMAGE[int(rng.integers(len(BYTE_DAMAGE)))](rng, data)


def damage_a_member(rng, data):
    """Damage the content of one zip member and re-zip it (valid CRC, so the reader sees it)."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        members = [(info, archive.read(info)) for info in archive.infolist()]
    target = int(rng.integers(len(members)))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for i, (info, content) in enumerate(members):
            archive.writestr(info.filename, damage_bytes(rng, content) if i == target else content)
    return out.getvalue()


# --- array-level damage of a checkpoint ------------------------------------------

def _some_key(rng, arrays, prefix=""):
    keys = sorted(k for k in arrays if k.startswith(prefix)) or sorted(arrays)
    return keys[int(rng.integers(len(keys)))]


def damage_arrays(rng, arrays, meta):
    """One random change to a checkpoint's arrays or metadata (in place)."""
    kind = int(rng.integers(9))
    key = _some_key(rng, arrays)
    if kind == 0:
        arrays[key] = arrays[key].astype(np.float64).copy()
        arrays[key].flat[int(rng.integers(max(arrays[key].size, 1)))] = rng.choice([np.nan, np.inf, -np.inf])
    elif kind == 1:
        arrays[key] = arrays[key].astype(str(rng.choice(["int64", "int8", "bool", "complex64", "U3"])))
    elif kind == 2:
        arrays[key] = arrays[key].reshape(-1)[: max(arrays[key].size - 1, 0)]
    elif kind == 3:
        del arrays[_some_key(rng, arrays, str(rng.choice(["decoder/", "encoder/", "optim/"])))]
    elif kind == 4:
        arrays[str(rng.choice(["stray", "decoder/extra", "encoder/extra", "optim/m/extra"]))] = np.zeros(3)
    elif kind == 5:
        arrays[key] = np.float32(rng.standard_normal())        # a 0-d array
    else:   # metadata: a field removed, or given a value of the wrong type
        record = meta
        path = [str(rng.choice(["model", "encoder", "vocabulary", "training", "format"]))]
        if path[0] in ("model", "encoder", "vocabulary", "training") and isinstance(meta.get(path[0]), dict) \
                and meta[path[0]] and rng.random() < 0.7:
            path.append(sorted(meta[path[0]])[int(rng.integers(len(meta[path[0]])))])
        for step in path[:-1]:
            record = record[step]
        if kind == 6:
            record.pop(path[-1], None)
        else:
            record[path[-1]] = [None, -1, 2 ** 40, "x", [], {}, 1.5, True][int(rng.integers(8))]


def write_npz(path, arrays, meta):
    """save_npz without its atomic rename and fsync (a few ms each, most of this test's time)."""
    np.savez(path, **arrays, **{META_KEY: np.array(json.dumps(meta))})


# --- the loaders under test ------------------------------------------------------

def load_checkpoint_fully(path):
    """What evaluate and caption do with a checkpoint file."""
    ckpt = load_checkpoint(path)
    make_encoder(ckpt.encoder, ckpt.encoder_state, dtype=ckpt.model.dtype)


def load_pth_fully(path):
    load_pth(path)
    load_state_dict(path)


class _Hang(Exception):
    pass


@contextlib.contextmanager
def _time_limit(seconds):
    """Raise _Hang in this (main) thread after `seconds` (where SIGALRM exists)."""
    if not hasattr(signal, "setitimer"):
        yield
        return

    def hang(signum, frame):
        raise _Hang()
    previous = signal.signal(signal.SIGALRM, hang)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class Outcomes:
    """Counts of each outcome; fails on a forbidden exception, a slow input or memory growth."""

    def __init__(self, allowed):
        self.allowed, self.counts, self.slowest = allowed, {}, 0.0
        self.peak_before = self._peak()

    def run(self, loader, path, description):
        start = time.perf_counter()
        try:
            with _time_limit(SECONDS_PER_INPUT):
                loader(path)
            outcome = "ok"
        except self.allowed as exc:
            outcome = type(exc).__name__
            assert "\n" not in str(exc).strip(), f"{description}: a message of several lines: {exc}"
        except _Hang:
            pytest.fail(f"{description}: still loading after {SECONDS_PER_INPUT} s")
        except BaseException as exc:   # noqa: B902 -- anything else is the bug this test hunts
            pytest.fail(f"{description}: {type(exc).__name__}: {exc}"[:2000])
        elapsed = time.perf_counter() - start
        self.slowest = max(self.slowest, elapsed)
        assert elapsed < SECONDS_PER_INPUT, f"{description} took {elapsed:.1f} s"
        self.counts[outcome] = self.counts.get(outcome, 0) + 1

    @staticmethod
    def _peak():
        """This process's peak memory in kB (ru_maxrss: kB on Linux, bytes on macOS), or 0."""
        if resource is None:
            return 0
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak // 1024 if sys.platform == "darwin" else peak

    def check_memory(self):
        grown_kb = self._peak() - self.peak_before
        assert grown_kb < MEMORY_GROWTH_MB * 1024, f"peak memory grew by {grown_kb // 1024} MB"

    @property
    def total(self):
        return sum(self.counts.values())


def test_damaged_checkpoints_load_or_raise_our_errors(tmp_path):
    good = tiny_checkpoint(tmp_path / "good.npz")
    data = good.read_bytes()
    arrays, meta = load_npz(good)
    rng = np.random.default_rng(SEED)
    outcomes = Outcomes(CHECKPOINT_ERRORS)
    path = tmp_path / "damaged.npz"
    for i in range(700):
        choice = i % 7
        if choice < 2:
            path.write_bytes(damage_bytes(rng, data))
        elif choice < 4:
            path.write_bytes(damage_a_member(rng, data))
        else:
            changed, changed_meta = dict(arrays), json.loads(json.dumps(meta))
            damage_arrays(rng, changed, changed_meta)
            write_npz(path, changed, changed_meta)
        outcomes.run(load_checkpoint_fully, path, f"checkpoint mutation {i} (kind {choice})")
    outcomes.check_memory()
    assert outcomes.total == 700 and outcomes.counts.get("ok", 0) < 700
    assert len(outcomes.counts) >= 3, outcomes.counts       # the damage reaches several checks


@pytest.mark.parametrize("writer", [write_legacy, write_zip])
def test_damaged_pth_files_load_or_raise_checkpoint_error(tmp_path, writer):
    storages, entries, _ = _example()
    good = tmp_path / "good.pth"
    writer(good, storages, entries)
    data = good.read_bytes()
    rng = np.random.default_rng([SEED, 1 if writer is write_legacy else 2])
    outcomes = Outcomes(PTH_ERRORS)
    path = tmp_path / "damaged.pth"
    for i in range(300):
        if writer is write_zip and i % 2:
            path.write_bytes(damage_a_member(rng, data))
        else:
            path.write_bytes(damage_bytes(rng, data))
        outcomes.run(load_pth_fully, path, f"{writer.__name__} mutation {i}")
    outcomes.check_memory()
    assert outcomes.total == 300 and len(outcomes.counts) >= 2, outcomes.counts


def test_hostile_pth_views_raise_checkpoint_error(tmp_path):
    """Tensor records with random (often absurd) sizes, strides and offsets."""
    rng = np.random.default_rng([SEED, 3])
    outcomes = Outcomes(PTH_ERRORS)
    path = tmp_path / "view.pth"
    values = [0, 1, 2, 3, 4, 2 ** 31 - 1, 2 ** 40, -1]
    for i in range(200):
        ndim = int(rng.integers(0, 4))
        size = tuple(int(rng.choice(values)) for _ in range(ndim))
        stride = tuple(int(rng.choice(values)) for _ in range(ndim))
        offset = int(rng.choice(values))
        storages = {"0": np.arange(6, dtype=np.float32)}
        entries = [("w", "FloatStorage", "0", int(rng.choice([6, 0, 2 ** 40, -5])), offset, size, stride)]
        (write_legacy if i % 2 else write_zip)(path, storages, entries)
        outcomes.run(load_pth_fully, path, f"view {size} stride {stride} offset {offset} ({i})")
    outcomes.check_memory()
    assert outcomes.counts.get("ok", 0) > 0 and outcomes.counts.get("CheckpointError", 0) > 0
