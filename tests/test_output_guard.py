"""Nothing lost, nothing silent: no command overwrites what it reads, a full disk or an odd file
name is a one-line error, and a killed run leaves no temporary files behind for good."""
import errno
import io
import os
import sys

import pytest

from captioning.cli import main
from data_fixtures import make_original, tiny_corpus

TINY = ["--hidden", "24", "--embed", "16", "--attention-dim", "16"]


@pytest.fixture(scope="module")
def shapes_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes_run")
    assert main(["train", "--max-images", "12", "--epochs", "1", "--batch-size", "20", *TINY,
                 "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def flickr_run(tmp_path_factory):
    """(data folder, feature cache, run folder) of a tiny Flickr8k look-alike."""
    tmp = tmp_path_factory.mktemp("flickr_run")
    root = make_original(tmp / "flickr", *tiny_corpus())
    cache, run = tmp / "features", tmp / "run"
    assert main(["features", "--data", str(root), "--out", str(cache), "--no-progress"]) == 0
    assert main(["train", "--data", str(root), "--features", str(cache), "--epochs", "1", "--min-count", "1",
                 *TINY, "--quiet", "--out", str(run)]) == 0
    return root, cache, run


def _fails(capsys, argv, message):
    """The command exits 2 with `message` in its one-line error (no traceback)."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and message in errors[0] and errors[0] == err.splitlines()[-1], err
    return errors[0]


def test_evaluate_never_overwrites_its_checkpoint(shapes_run, capsys, tmp_path, monkeypatch):
    checkpoint = shapes_run / "best.npz"
    before = checkpoint.read_bytes()
    link = tmp_path / "link.npz"
    link.symlink_to(checkpoint)
    monkeypatch.chdir(shapes_run)
    for out in (str(checkpoint), "./best.npz", f"../{shapes_run.name}/best.npz", str(link)):
        _fails(capsys, ["evaluate", "--checkpoint", str(checkpoint), "--out", out],
               f"--out {out} would overwrite the checkpoint {checkpoint}")
    assert checkpoint.read_bytes() == before


def test_evaluate_refuses_a_device_or_pipe_as_out_before_decoding(shapes_run, capsys, tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    for out in ("/dev/null", str(fifo)):
        _fails(capsys, ["evaluate", "--checkpoint", str(shapes_run / "best.npz"), "--out", out],
               f"--out {out} is a device, pipe or socket, not a file")
    assert os.path.exists("/dev/null") and not os.path.isfile("/dev/null") and fifo.is_fifo()


def test_evaluate_never_overwrites_its_feature_cache(flickr_run, capsys):
    root, cache, run = flickr_run
    for name in ("features.json", "features.grid.npy", "features.pooled.npy"):
        before = (cache.parent / name).read_bytes()
        _fails(capsys, ["evaluate", "--checkpoint", str(run / "best.npz"), "--features", str(cache),
                        "--out", str(cache.parent / name)], "would overwrite the feature cache")
        assert (cache.parent / name).read_bytes() == before
    # without --features: the cache the checkpoint names is protected too
    _fails(capsys, ["evaluate", "--checkpoint", str(run / "best.npz"), "--out", str(cache) + ".json"],
           "would overwrite the feature cache")
    assert main(["evaluate", "--checkpoint", str(run / "best.npz"), "--features", str(cache)]) == 0


def test_train_refuses_the_data_folder_itself_as_out(flickr_run, capsys, tmp_path):
    root, cache, _ = flickr_run
    before = sorted(os.listdir(root))
    for out in (str(root), str(root) + "/", str(root / "Flickr8k_text" / "..")):
        _fails(capsys, ["train", "--data", str(root), "--features", str(cache), "--out", out],
               f"--out {out} is the data folder")
    assert sorted(os.listdir(root)) == before
    link = tmp_path / "link"
    link.symlink_to(root)
    _fails(capsys, ["train", "--data", str(root), "--features", str(cache), "--out", str(link / "run")],
           "lies inside the data folder")


def test_features_refuses_to_write_into_the_data_folder(flickr_run, capsys, tmp_path):
    root, _, _ = flickr_run
    link = tmp_path / "link"
    link.symlink_to(root / "Flickr8k_text")
    _fails(capsys, ["features", "--data", str(root), "--out", str(link / "cache"), "--no-progress"],
           "lies inside the data folder")
    assert not (link / "cache.json").exists()


def test_train_refuses_a_negative_max_minutes(capsys, tmp_path):
    for value in ("-1", "-0.5"):
        _fails(capsys, ["train", "--max-minutes", value, "--max-images", "12", "--epochs", "1", *TINY,
                        "--out", str(tmp_path / "run")],
               f"--max-minutes must be >= 0, got {float(value)}")
    assert not (tmp_path / "run").exists()


def test_caption_never_draws_over_an_image_or_the_checkpoint(shapes_run, capsys, tmp_path):
    from PIL import Image
    image = tmp_path / "photo.png"
    Image.new("RGB", (64, 64), (200, 30, 30)).save(image)
    checkpoint = tmp_path / "model.png"              # a checkpoint under an odd name
    checkpoint.write_bytes((shapes_run / "best.npz").read_bytes())
    link = tmp_path / "again.png"
    link.symlink_to(image)
    _fails(capsys, ["caption", str(image), "--checkpoint", str(checkpoint), "--attention-png", str(checkpoint)],
           "would overwrite the checkpoint")
    _fails(capsys, ["caption", str(link), "--checkpoint", str(checkpoint), "--attention-png", str(image)],
           "would overwrite the input image")


def test_printing_odd_file_names_never_fails(shapes_run, tmp_path, monkeypatch):
    from PIL import Image
    name = os.fsencode(tmp_path) + b"/\xff\xe9-\xc3\xa9.png"        # not UTF-8, then an accented letter
    Image.new("RGB", (64, 64), (200, 30, 30)).save(name, format="PNG")
    ascii_out = io.TextIOWrapper(io.BytesIO(), encoding="ascii")    # as with PYTHONIOENCODING=ascii
    monkeypatch.setattr(sys, "stdout", ascii_out)
    assert main(["caption", os.fsdecode(name), "--checkpoint", str(shapes_run / "best.npz")]) == 0
    ascii_out.flush()
    printed = ascii_out.buffer.getvalue().decode("ascii")
    assert "\\udcff\\udce9-\\xe9.png: " in printed


def _tiny_flickr(tmp_path):
    return make_original(tmp_path / "flickr", *tiny_corpus())


def test_features_checks_free_disk_space_before_making_a_file(tmp_path, capsys, monkeypatch):
    import shutil
    from collections import namedtuple
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10 ** 9, 10 ** 9 - 5000, 5000))
    root, out = _tiny_flickr(tmp_path), tmp_path / "new" / "cache"
    err = _fails(capsys, ["features", "--data", str(root), "--out", str(out), "--no-progress"],
                 f"not enough disk space for the feature cache {out}.grid.npy")
    assert "MB free" in err and not (tmp_path / "new").exists()


def test_a_full_disk_while_allocating_the_cache_names_the_file(tmp_path, capsys, monkeypatch):
    def no_space(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "posix_fallocate", no_space, raising=False)
    root, out = _tiny_flickr(tmp_path), tmp_path / "cache"
    _fails(capsys, ["features", "--data", str(root), "--out", str(out), "--no-progress"],
           f"No space left on device): '{out}.grid.npy'")
    assert not os.path.exists(f"{out}.grid.npy") and not os.path.exists(f"{out}.json")


def test_resuming_a_cache_needs_space_only_for_what_it_does_not_hold(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple
    import numpy
    from captioning.features import FeatureCacheError, extract_features, open_cache
    from test_features import QuadrantEncoder, _photos

    class WideEncoder(QuadrantEncoder):               # 60 kB of float16 features per image
        def features(self, images):
            grid, pooled = super().features(images)
            return numpy.tile(grid, (1, 1, 2000)), numpy.tile(pooled, (1, 2000))

    paths, ids = _photos(tmp_path, 6)
    little = namedtuple("usage", "total used free")(10 ** 9, 10 ** 9, 200_000)   # 200 kB free

    def stop_after_one_batch(out):
        with pytest.raises(KeyboardInterrupt):
            extract_features(WideEncoder(fail_after_batches=2), paths, ids, out, batch_size=2, progress=False)
        assert open_cache(out, allow_incomplete=True).complete == 2

    stop_after_one_batch(tmp_path / "reserved")          # its files hold all their space already
    with monkeypatch.context() as m:                     # a sparse cache (no posix_fallocate here)
        m.delattr(os, "posix_fallocate", raising=False)
        stop_after_one_batch(tmp_path / "sparse")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: little)
    assert len(extract_features(WideEncoder(), paths, ids, tmp_path / "reserved", batch_size=2,
                                progress=False)) == 6
    with pytest.raises(FeatureCacheError, match="not enough disk space"):   # 240 kB of rows to come
        extract_features(WideEncoder(), paths, ids, tmp_path / "sparse", batch_size=2, progress=False)


def test_a_full_disk_while_saving_names_the_file(shapes_run, tmp_path, capsys, monkeypatch):
    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")
    out = tmp_path / "captions.json"
    monkeypatch.setattr(os, "fsync", no_space)
    _fails(capsys, ["evaluate", "--checkpoint", str(shapes_run / "best.npz"), "--out", str(out)],
           f"No space left on device): '{out}'")
    assert os.listdir(tmp_path) == []


def test_train_removes_what_a_killed_save_left_behind(tmp_path, capsys):
    from test_nn_persist import killed_during_write
    run = tmp_path / "run"
    argv = ["train", "--max-images", "12", "--epochs", "1", "--batch-size", "20", *TINY, "--quiet", "--out", str(run)]
    assert main(argv) == 0
    stale = [killed_during_write(run / name) for name in ("curves.png", "last.npz", "best.npz", "sample_0.png")]
    assert all(os.path.exists(path) for path in stale)
    assert main(argv + ["--resume"]) == 0
    assert not any(os.path.exists(path) for path in stale)
    assert not [name for name in os.listdir(run) if name.endswith(".tmp")]


def test_download_never_deletes_the_archives_of_a_local_mirror(tmp_path, capsys):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for name in ("Flickr8k_Dataset.zip", "Flickr8k_text.zip"):
        (mirror / name).write_bytes(b"an archive")
    for dest in (mirror, tmp_path / "." / "mirror"):
        _fails(capsys, ["download", "--url-base", mirror.as_uri(), "--dest", str(dest)],
               "would overwrite the archive of --url-base")
    assert sorted(os.listdir(mirror)) == ["Flickr8k_Dataset.zip", "Flickr8k_text.zip"]


def test_a_full_disk_while_unpacking_names_the_file(tmp_path, monkeypatch):
    import shutil
    import zipfile
    from captioning.data import download
    archive = tmp_path / "Flickr8k_text.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("Flickr8k_text/Flickr8k.token.txt", "a.jpg#0\ta dog .\n")

    def no_space(source, out, length=0):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(shutil, "copyfileobj", no_space)
    with pytest.raises(OSError, match="No space left on device") as info:
        download.extract_archive(archive, tmp_path, "Flickr8k_text")
    assert info.value.filename == str(tmp_path / "Flickr8k_text" / "Flickr8k.token.txt")
    assert sorted(os.listdir(tmp_path)) == ["Flickr8k_text.zip"]          # no half-unpacked folder


def test_a_reader_that_closes_the_pipe_stops_caption_quietly(shapes_run):
    import subprocess
    images = sorted(str(p) for p in shapes_run.glob("sample_*.png")) * 40      # more than a pipe buffer
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    command = [sys.executable, "-m", "captioning", "caption", *images, "--beam", "1",
               "--checkpoint", str(shapes_run / "best.npz")]
    process = subprocess.Popen(command, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.readline()
    process.stdout.close()                  # as `| head -1` does
    err = process.stderr.read().decode()
    assert process.wait() == 141 and "Traceback" not in err and "BrokenPipe" not in err, err


@pytest.mark.parametrize("argv, message", [
    (["--seed", "-1"], "--seed must be >= 0"),
    (["--hidden", "1000000"], "allowed here: lower --hidden, --embed or --attention-dim"),
    (["--beam", "100000"], "--beam 100000 is more than the"),
    (["--min-count", "100000"], "the vocabulary would hold only the special tokens"),
])
def test_train_refuses_settings_that_would_fail_late_or_train_nothing(argv, message, capsys, tmp_path):
    _fails(capsys, ["train", "--max-images", "12", "--epochs", "1", *argv, "--out", str(tmp_path / "run")],
           message)
    assert not (tmp_path / "run" / "last.npz").exists()


@pytest.mark.parametrize("command", ["evaluate", "caption"])
@pytest.mark.parametrize("argv, message", [
    (["--beam", "1000000000"], "--beam 1000000000 is more than the"),
    (["--length-alpha", "300"], "--length-alpha must be a number in [0, 10]"),
])
def test_decoding_settings_are_checked_before_decoding(command, argv, message, shapes_run, capsys):
    images = [str(shapes_run / "sample_0.png")] if command == "caption" else []
    _fails(capsys, [command, *images, "--checkpoint", str(shapes_run / "best.npz"), *argv], message)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")      # the overflows are the point here
def test_train_never_saves_weights_that_became_non_finite(capsys, tmp_path):
    # lr 1e12 blows up the small CNN's batchnorm running variance (no gradient sees it) while the
    # training loss stays finite: the checkpoint must not be written.
    assert main(["train", "--shapes-train", "20", "--epochs", "1", "--lr", "1e12", "--out", str(tmp_path)]) == 1
    assert "became non-finite (NaN or inf)" in capsys.readouterr().err     # diverged: exit 1, as for a NaN loss
    assert not (tmp_path / "best.npz").exists() and not (tmp_path / "last.npz").exists()


@pytest.mark.parametrize("argv, message", [
    (["features", "--out", ""], "--out is empty"),
    (["evaluate", "--checkpoint", "x.npz", "--features", ""], "--features is empty"),
    (["caption", "", "--checkpoint", "x.npz"], "one of the images given is an empty name"),
])
def test_an_empty_name_is_refused_not_taken_for_the_default(argv, message, capsys):
    _fails(capsys, argv, message)
