"""Atomic .npz save/load of arrays, models and optimizer state."""
import os
import stat
import zipfile

import numpy
import pytest

from nn import backend, layers, optim, persist


def small_model(seed=0):
    return layers.Sequential(layers.Affine(3, 4, seed=seed), layers.ReLU(), layers.Affine(4, 2, seed=seed + 1))


def test_npz_round_trip_with_meta(tmp_path):
    path = tmp_path / "arrays.npz"
    arrays = {
        "param/decoder.lstm.Wx": numpy.arange(6, dtype=numpy.float32).reshape(2, 3),
        "ids": numpy.array([1, 2, 3], dtype=numpy.int64),
        "half": numpy.array([0.5], dtype=numpy.float16),
    }
    meta = {"vocab_size": 7, "name": "show-and-tell", "layers": [1, 2]}
    assert persist.save_npz(path, arrays, meta=meta) == str(path)
    loaded, loaded_meta = persist.load_npz(path)
    assert loaded_meta == meta
    assert set(loaded) == set(arrays)
    for key, value in arrays.items():
        assert loaded[key].dtype == value.dtype
        numpy.testing.assert_array_equal(loaded[key], value)
    # the metadata is a plain unicode array: numpy itself reads it without pickle
    with numpy.load(path, allow_pickle=False) as raw:
        assert raw[persist.META_KEY].dtype.kind == "U"
    assert persist.load_npz(path)[1] == meta
    persist.save_npz(path, {"a": numpy.zeros(2)})
    assert persist.load_npz(path)[1] is None
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's owner-only 0600


def test_npz_refuses_pickles_and_bad_input(tmp_path):
    with pytest.raises(TypeError, match="object"):
        persist.save_npz(tmp_path / "x.npz", {"a": numpy.array([{}, 1], dtype=object)})
    with pytest.raises(ValueError, match="reserved"):
        persist.save_npz(tmp_path / "x.npz", {persist.META_KEY: numpy.zeros(1)})
    with pytest.raises(TypeError, match="JSON"):
        persist.save_npz(tmp_path / "x.npz", {"a": numpy.zeros(1)}, meta={"f": object()})
    with pytest.raises(FileNotFoundError, match="no_such_folder"):
        persist.save_npz(tmp_path / "no_such_folder" / "x.npz", {"a": numpy.zeros(1)})
    pickled = tmp_path / "pickled.npz"
    numpy.savez(pickled, a=numpy.array([{}, 1], dtype=object))
    with pytest.raises(ValueError, match="pickled.npz"):
        persist.load_npz(pickled)
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        persist.load_npz(tmp_path / "missing.npz")
    truncated = tmp_path / "truncated.npz"
    persist.save_npz(truncated, {"a": numpy.arange(1000.0)})
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated.npz"):
        persist.load_npz(truncated)
    text = tmp_path / "notes.npz"              # numpy.load alone would take it for a pickle
    text.write_text("not an archive")
    with pytest.raises(persist.NpzFormatError, match=r"notes.npz is not an .npz file \(not a zip archive\)"):
        persist.load_npz(text)
    for name in ("file", "allow_pickle"):      # numpy.savez's keywords: would crash / be dropped
        with pytest.raises(ValueError, match=f"'{name}' cannot be an array name"):
            persist.save_npz(tmp_path / "x.npz", {name: numpy.zeros(1)})


def test_crash_during_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "model.npz"
    persist.save_npz(path, {"w": numpy.ones(3)}, meta={"epoch": 1})
    before = path.read_bytes()

    def crashing_savez(file, **arrays):
        file.write(b"PK\x03\x04 half a zip file")  # some bytes reach the disk, then:
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(numpy, "savez", crashing_savez)
    with pytest.raises(OSError, match="simulated"):
        persist.save_npz(path, {"w": numpy.zeros(3)}, meta={"epoch": 2})
    monkeypatch.undo()
    assert path.read_bytes() == before
    arrays, meta = persist.load_npz(path)
    numpy.testing.assert_array_equal(arrays["w"], numpy.ones(3))
    assert meta == {"epoch": 1}
    assert os.listdir(tmp_path) == ["model.npz"]  # no temporary file left behind


def test_interrupt_during_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "model.npz"
    persist.save_npz(path, {"w": numpy.ones(3)})

    def interrupted_replace(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted_replace)
    with pytest.raises(KeyboardInterrupt):
        persist.save_npz(path, {"w": numpy.zeros(3)})
    monkeypatch.undo()
    numpy.testing.assert_array_equal(persist.load_npz(path)[0]["w"], numpy.ones(3))
    assert os.listdir(tmp_path) == ["model.npz"]


def test_save_and_load_model_with_optimizer(xp, tmp_path):
    backend.set_default_float(numpy.float64)
    model = small_model(seed=0)
    opt = optim.Adam(model, lr=0.01)
    x = xp.asarray(numpy.random.default_rng(0).standard_normal((5, 3)))
    out = model.forward(x)
    model.backward(xp.ones_like(out))
    opt.step()
    path = tmp_path / "ckpt.npz"
    persist.save_model(path, model, opt, meta={"epoch": 3})
    with zipfile.ZipFile(path) as archive:
        names = set(archive.namelist())
    assert {"param/0.w.npy", "param/2.b.npy", "optim/m/0.w.npy", "optim/t.npy"} <= names

    other = small_model(seed=10)
    other_opt = optim.Adam(other, lr=0.5)
    meta = persist.load_model(path, other, other_opt)
    assert meta == {"epoch": 3}
    for (name, p, _), (_, q, _) in zip(model.named_parameters(), other.named_parameters()):
        numpy.testing.assert_array_equal(backend.to_numpy(p), backend.to_numpy(q), err_msg=name)
        assert backend.get_array_module(q) is xp
    assert other_opt.t == 1 and other_opt.lr == 0.01
    numpy.testing.assert_array_equal(backend.to_numpy(other_opt.state["v"]["2.w"]),
                                     backend.to_numpy(opt.state["v"]["2.w"]))


def test_load_model_lists_what_differs_and_changes_nothing(tmp_path):
    path = tmp_path / "ckpt.npz"
    persist.save_model(path, small_model())
    wrong = layers.Sequential(layers.Affine(3, 5, seed=0), layers.ReLU(), layers.Affine(5, 2, seed=1),
                              layers.Affine(2, 2, seed=2))
    before = {k: v.copy() for k, v in wrong.state_dict().items()}
    with pytest.raises(ValueError) as info:
        persist.load_model(path, wrong)
    message = str(info.value)
    assert "ckpt.npz" in message
    assert "missing (in the model, not in the saved state): 3.b, 3.w" in message
    assert "0.w: saved (3, 4), model (3, 5)" in message
    assert "2.w: saved (4, 2), model (5, 2)" in message
    for key, value in wrong.state_dict().items():
        numpy.testing.assert_array_equal(value, before[key])

    with pytest.raises(ValueError, match="no optimizer state"):
        persist.load_model(path, small_model(), optim.Adam(small_model()))
    persist.save_model(path, small_model(), optim.SGD(small_model()))
    with pytest.raises(ValueError, match="SGD state, cannot restore it into Adam"):
        persist.load_model(path, small_model(), optim.Adam(small_model()))
    plain = tmp_path / "plain.npz"
    persist.save_npz(plain, {"w": numpy.zeros(1)})
    with pytest.raises(ValueError, match="not written by"):
        persist.load_model(plain, small_model())


def test_bad_optimizer_state_leaves_model_untouched(tmp_path):
    path = tmp_path / "ckpt.npz"
    saved_model = small_model(seed=0)
    saved_opt = optim.Adam(saved_model)
    saved_model.forward(numpy.ones((2, 3), dtype=backend.default_float()))
    saved_model.backward(numpy.ones((2, 2), dtype=backend.default_float()))
    saved_opt.step()
    persist.save_model(path, saved_model, saved_opt)
    # same parameter names and shapes, but the optimizer covers only part of them
    target = small_model(seed=5)
    partial = optim.Adam(list(target.named_parameters())[:2])
    before = target.state_dict()
    with pytest.raises(ValueError, match="2.w"):
        persist.load_model(path, target, partial)
    for key, value in target.state_dict().items():
        numpy.testing.assert_array_equal(value, before[key])


def test_compare_named_shapes_lists_each_kind_of_difference():
    from nn.persist import compare_named_shapes
    expected = {"a": (2, 3), "b": numpy.zeros((4,)), "c": (1,)}
    found = {"b": numpy.zeros((5,)), "c": numpy.zeros((1,)), "d": (7,)}
    missing, unexpected, mismatched = compare_named_shapes(expected, found)
    assert missing == ["a"] and unexpected == ["d"]
    assert mismatched == [("b", (4,), (5,))]
    assert compare_named_shapes(found, found) == ([], [], [])


def test_atomic_write_is_all_or_nothing_with_usual_permissions(tmp_path):
    path = tmp_path / "index.json"
    with persist.atomic_write(path, "w", encoding="utf-8") as f:
        f.write('{"complete": 1}')
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask     # not mkstemp's owner-only 0600
    with pytest.raises(RuntimeError):
        with persist.atomic_write(path, "w", encoding="utf-8") as f:
            f.write('{"complete": 2')
            raise RuntimeError("interrupted half way")
    assert path.read_text() == '{"complete": 1}' and sorted(p.name for p in tmp_path.iterdir()) == ["index.json"]


def test_load_npz_refuses_members_that_are_not_arrays(tmp_path):
    path = tmp_path / "mixed.npz"
    persist.save_npz(path, {"w": numpy.ones(2)})
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr("notes.txt", "hello")
    with pytest.raises(persist.NpzFormatError, match="not arrays: \\['notes.txt'\\]"):
        persist.load_npz(path)


def killed_during_write(path):
    """Run atomic_write(path) in a process killed half way (as by kill -9); returns its leftover."""
    import subprocess
    import sys
    code = ("import os, sys\nfrom nn.persist import atomic_write\n"
            "with atomic_write(sys.argv[1]) as f:\n    f.write(b'half')\n    f.flush()\n    os._exit(9)\n")
    before = set(os.listdir(os.path.dirname(os.path.abspath(path))))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))      # where nn/ is
    assert subprocess.run([sys.executable, "-c", code, str(path)], cwd=root).returncode == 9
    left = set(os.listdir(os.path.dirname(os.path.abspath(path)))) - before
    assert len(left) == 1
    return os.path.join(os.path.dirname(os.path.abspath(path)), left.pop())


def test_remove_stale_temporaries_removes_only_those_of_dead_writers(tmp_path):
    target = tmp_path / "curves.png"
    target.write_bytes(b"previous")
    stale = killed_during_write(target)
    assert os.path.basename(stale).startswith(".curves.png.") and stale.endswith(".tmp")
    alive = tmp_path / f".curves.png.{os.getppid()}.abcd1234.tmp"    # a writer still running
    others = [tmp_path / f".curves.png.x.{os.getppid() + 10 ** 7}.ab.tmp", tmp_path / ".last.npz.1.ab.tmp",
              tmp_path / ".curves.png.tmp", tmp_path / "notes.txt"]
    for path in [alive] + others:
        path.write_bytes(b"")
    assert persist.remove_stale_temporaries(target) == [stale]
    assert not os.path.exists(stale) and target.read_bytes() == b"previous"
    assert alive.exists() and all(path.exists() for path in others)
    assert persist.remove_stale_temporaries(tmp_path / "no" / "such.json") == []


def test_load_npz_refuses_a_compressed_bomb_before_allocating_it(tmp_path):
    path = tmp_path / "bomb.npz"
    numpy.savez_compressed(path, w=numpy.zeros(64 * 2 ** 20 // 8 + 2 ** 20))   # 72 MiB of zeros
    assert path.stat().st_size < 200_000
    with pytest.raises(persist.NpzFormatError, match=r"member w.npy would expand from \d+ to \d+ bytes"):
        persist.load_npz(path)
    small = tmp_path / "small.npz"
    numpy.savez_compressed(small, w=numpy.zeros(1000))          # compresses well, but is small: fine
    assert persist.load_npz(small)[0]["w"].shape == (1000,)


def test_load_npz_refuses_a_header_claiming_more_than_the_member_holds(tmp_path):
    import io
    member = io.BytesIO()
    numpy.lib.format.write_array_header_1_0(
        member, {"descr": "<f8", "fortran_order": False, "shape": (9999999999,)})
    member.write(numpy.ones(4).tobytes())                      # 32 bytes, not 80 GB
    path = tmp_path / "liar.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("w.npy", member.getvalue())
    with pytest.raises(persist.NpzFormatError, match=r"claims a float64 array of shape \(9999999999,\)"):
        persist.load_npz(path)


def _set_encrypted_flag(path):
    """Mark every member of the zip at `path` as encrypted (flag bit 0 of its directory entry)."""
    data = bytearray(path.read_bytes())
    at = data.find(b"PK\x01\x02")
    while at >= 0:
        data[at + 8] |= 1
        at = data.find(b"PK\x01\x02", at + 4)
    path.write_bytes(bytes(data))


def test_load_npz_calls_an_encrypted_or_damaged_header_member_a_format_error(tmp_path):
    path = tmp_path / "locked.npz"
    persist.save_npz(path, {"w": numpy.ones(2)})
    _set_encrypted_flag(path)
    with pytest.raises(persist.NpzFormatError, match="w.npy is encrypted"):
        persist.load_npz(path)
    with zipfile.ZipFile(tmp_path / "header.npz", "w") as archive:   # a header NumPy's parser chokes on
        archive.writestr("w.npy", b"\x93NUMPY\x01\x00\x10\x00{'descr': '<f8',\n")
    with pytest.raises(persist.NpzFormatError, match="no readable .npy header"):
        persist.load_npz(tmp_path / "header.npz")


def test_atomic_write_follows_a_symlink_and_refuses_a_device(tmp_path):
    target = tmp_path / "real.json"
    target.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    with persist.atomic_write(link, "w", encoding="utf-8") as f:
        f.write("new")
    assert link.is_symlink() and target.read_text() == "new"
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(FileExistsError, match="not a regular file"):
        with persist.atomic_write(fifo) as f:
            f.write(b"x")
    assert fifo.is_fifo() and sorted(p.name for p in tmp_path.iterdir()) == ["link.json", "pipe", "real.json"]
