"""End-to-end runs of `python -m captioning train / evaluate / caption` (in process, small)."""
import json

import numpy
import pytest
from PIL import Image

from captioning.cli import main
from captioning.data.shapes import make_shapes_dataset

TINY_MODEL = ["--hidden", "24", "--embed", "16", "--attention-dim", "16"]


@pytest.fixture(scope="module")
def shapes_run(tmp_path_factory):
    """One tiny synthetic training run shared by the tests below."""
    out = tmp_path_factory.mktemp("shapes_run")
    code = main(["train", "--max-images", "12", "--epochs", "1", "--batch-size", "20", *TINY_MODEL,
                 "--out", str(out)])
    assert code == 0
    return out


def test_train_on_the_synthetic_set_writes_checkpoints_and_curves(shapes_run, capsys):
    for name in ("best.npz", "last.npz", "curves.png", "sample_0.png", "sample_3.png"):
        assert (shapes_run / name).is_file(), name
    with Image.open(shapes_run / "sample_0.png") as image:   # a test image, ready for `caption`
        assert image.size == (64, 64)
    with Image.open(shapes_run / "curves.png") as image:
        assert image.size == (720, 300)


def test_evaluate_prints_scores_and_writes_every_caption(shapes_run, capsys, tmp_path):
    out = tmp_path / "captions.json"
    assert main(["evaluate", "--checkpoint", str(shapes_run / "best.npz"), "--split", "test",
                 "--beam", "2", "--max-images", "7", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "shapes test: 7 images, beam search (beam 2), max length 20" in printed
    for label in ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "CIDEr-D"):
        assert label in printed
    record = json.loads(out.read_text())
    assert record["settings"]["beam"] == 2 and len(record["captions"]) == 7
    assert record["captions"][0]["image_id"] == "shapes-test-000000"
    assert len(record["captions"][0]["references"]) == 5
    bleu4 = float(printed.split("BLEU-4")[1].split()[0])
    assert bleu4 == pytest.approx(record["scores"]["BLEU-4"], abs=0.01)


def test_caption_image_files_with_attention_png(shapes_run, capsys, tmp_path):
    shapes = make_shapes_dataset(2, seed=7)
    files = []
    for i in range(2):
        files.append(tmp_path / f"img{i}.png")
        Image.fromarray(shapes.images[i].transpose(1, 2, 0)).save(files[i])
    png = tmp_path / "att.png"
    assert main(["caption", *map(str, files), "--checkpoint", str(shapes_run / "best.npz"),
                 "--beam", "2", "--attention-png", str(png)]) == 0
    lines = capsys.readouterr().out.splitlines()
    captions = [line for line in lines if line.startswith(str(tmp_path / "img"))]
    assert len(captions) == 2 and all(len(line.split(": ", 1)[1].split()) >= 1 for line in captions)
    for i in range(2):
        with Image.open(tmp_path / f"att-img{i}.png") as image:
            assert image.size[0] > 128 and numpy.asarray(image).std() > 10


def test_caption_errors_name_the_missing_image_and_the_bad_checkpoint(shapes_run, capsys, tmp_path):
    missing = tmp_path / "no_such_photo.jpg"
    assert main(["caption", str(missing), "--checkpoint", str(shapes_run / "best.npz")]) == 2
    assert f"image not found: {missing}" in capsys.readouterr().err
    not_a_checkpoint = tmp_path / "weights.npz"
    numpy.savez(not_a_checkpoint, w=numpy.zeros(3))
    image = tmp_path / "x.png"
    Image.new("RGB", (64, 64)).save(image)
    assert main(["caption", str(image), "--checkpoint", str(not_a_checkpoint)]) == 2
    assert "not a captioning checkpoint" in capsys.readouterr().err
    # a file that is no .npz at all, and an image that does not decode: one line, exit 2, no traceback
    text = tmp_path / "notes.npz"
    text.write_text("not an archive")
    assert main(["caption", str(image), "--checkpoint", str(text)]) == 2
    assert f"error: load_npz: {text} is not an .npz file" in capsys.readouterr().err
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    assert main(["caption", str(broken), "--checkpoint", str(shapes_run / "best.npz")]) == 2
    assert f"error: cannot decode image {broken}" in capsys.readouterr().err


@pytest.mark.parametrize("options, message", [
    (["--clip", "inf"], "--clip must be a finite number"),
    (["--clip", "0"], "--clip must be > 0"),
    (["--val-images", "0"], "--val-images must be >= 1"),
    (["--length-buckets", "-3"], "--length-buckets must be >= 0"),
    (["--features", "cache"], "--features needs --data"),
    (["--data", "somewhere", "--shapes-train", "10"], "--shapes-train is for the synthetic shapes set"),
    (["--resume", "--max-images", "4"], "to resume from (give the same --out)"),
])
def test_train_refuses_bad_options_before_training(tmp_path, capsys, options, message):
    assert main(["train", *options, "--out", str(tmp_path / "run")]) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "run").exists()


def test_train_without_a_feature_cache_says_how_to_make_one(tmp_path, capsys, flickr8k):
    assert main(["train", "--data", str(flickr8k), "--features", str(tmp_path / "none"),
                 "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "python -m captioning features --data" in err and "no feature cache" in err
    # a cache named with an extension it does not have (as checkpoints are: run.npz) is pointed to
    (tmp_path / "cache.json").write_text("{}")
    assert main(["train", "--data", str(flickr8k), "--features", str(tmp_path / "cache.npz"),
                 "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert f"use --features {tmp_path / 'cache'}" in err and "names a cache by its stem" in err


def test_flickr8k_slice_features_train_evaluate_caption(tmp_path, capsys, flickr8k):
    """~100 real photos (34 per split) through EfficientNet-Lite0, then the whole pipeline."""
    from captioning.data.flickr8k import load_flickr8k
    from captioning.encoders.efficientnet import EfficientNetLite0
    from captioning.features import extract_features

    data = load_flickr8k(flickr8k)
    splits = [data[name].subset(range(34)) for name in ("train", "dev", "test")]
    ids = [i for s in splits for i in s.image_ids]
    paths = [p for s in splits for p in s.image_paths]
    cache = tmp_path / "feat"
    extract_features(EfficientNetLite0.from_pretrained(), paths, ids, cache, batch_size=34, progress=False)

    out = tmp_path / "run"
    assert main(["train", "--data", str(flickr8k), "--features", str(cache), "--max-images", "34",
                 "--epochs", "1", "--min-count", "3", *TINY_MODEL, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "flickr8k (train 34 images, dev 34 images, test 34 images)" in printed
    assert "encoder: efficientnet_lite0 (frozen)" in printed

    json_out = tmp_path / "test.json"
    assert main(["evaluate", "--checkpoint", str(out / "best.npz"), "--split", "test", "--beam", "2",
                 "--out", str(json_out)]) == 0
    assert "flickr8k test: 34 images" in capsys.readouterr().out
    record = json.loads(json_out.read_text())
    assert [c["image_id"] for c in record["captions"]] == list(splits[2].image_ids)
    # raw references (no <UNK>) are what BLEU is computed against
    assert record["captions"][0]["references"][0] == " ".join(splits[2].tokens[0][0])

    png = tmp_path / "photo.png"
    assert main(["caption", paths[-1], "--checkpoint", str(out / "best.npz"), "--attention-png", str(png)]) == 0
    assert paths[-1] in capsys.readouterr().out and png.is_file()

    # evaluating one split needs the features of that split only
    test_cache = tmp_path / "test_only"
    extract_features(EfficientNetLite0.from_pretrained(), list(splits[2].image_paths), list(splits[2].image_ids),
                     test_cache, batch_size=34, progress=False)
    assert main(["evaluate", "--checkpoint", str(out / "best.npz"), "--features", str(test_cache),
                 "--split", "test", "--beam", "1", "--out", str(tmp_path / "t.json")]) == 0
    assert "flickr8k test: 34 images" in capsys.readouterr().out


def _shape_images(folder, count, seed=7):
    shapes = make_shapes_dataset(count, seed=seed)
    files = []
    for i in range(count):
        files.append(folder / f"img{i}.png")
        Image.fromarray(shapes.images[i].transpose(1, 2, 0)).save(files[i])
    return files


def test_caption_works_in_batches_and_prints_as_it_goes(shapes_run, capsys, tmp_path, monkeypatch):
    from captioning.commands import caption
    files = list(map(str, _shape_images(tmp_path, 5)))
    checkpoint = str(shapes_run / "best.npz")
    assert main(["caption", *files, "--checkpoint", checkpoint, "--beam", "2"]) == 0
    one_batch = capsys.readouterr().out
    monkeypatch.setattr(caption, "BATCH_SIZE", 2)             # batches of 2, 2 and 1 images
    assert main(["caption", *files, "--checkpoint", checkpoint, "--beam", "2"]) == 0
    assert capsys.readouterr().out == one_batch and len(one_batch.splitlines()) == 5


def test_caption_refuses_attention_pngs_that_overwrite(shapes_run, capsys, tmp_path):
    checkpoint = str(shapes_run / "best.npz")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, second = _shape_images(tmp_path / "a", 1)[0], _shape_images(tmp_path / "b", 1)[0]
    assert main(["caption", str(first), str(second), "--checkpoint", checkpoint,
                 "--attention-png", str(tmp_path / "att.png")]) == 2
    assert "would both write their attention picture to" in capsys.readouterr().err
    before = first.read_bytes()
    assert main(["caption", str(first), "--checkpoint", checkpoint, "--attention-png", str(first)]) == 2
    assert "would overwrite the input image" in capsys.readouterr().err and first.read_bytes() == before
    assert main(["caption", str(first), "--checkpoint", checkpoint, "--attention-png", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err
    assert main(["caption", str(first), "--checkpoint", checkpoint, "--attention-png", str(tmp_path / "a.jpg")]) == 2
    assert "give a name ending in .png" in capsys.readouterr().err
    assert main(["caption", str(first), "--checkpoint", checkpoint, "--attention-png", str(tmp_path / "att")]) == 0
    assert (tmp_path / "att.png").is_file()
    assert main(["caption", str(tmp_path / "a"), "--checkpoint", checkpoint]) == 2
    assert "is a folder, not an image file" in capsys.readouterr().err
    assert main(["caption", str(first), "--checkpoint", str(shapes_run)]) == 2
    assert f"is a folder: give a file in it, e.g. {shapes_run / 'best.npz'}" in capsys.readouterr().err
    for alpha in ("nan", "-5"):
        assert main(["caption", str(first), "--checkpoint", checkpoint, "--length-alpha", alpha]) == 2
        assert "--length-alpha must be a number in [0, 10]" in capsys.readouterr().err


def test_evaluate_checks_its_output_and_options_before_decoding(shapes_run, capsys, tmp_path):
    checkpoint = str(shapes_run / "best.npz")
    assert main(["evaluate", "--checkpoint", checkpoint, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"--out {tmp_path} is a folder" in err
    assert main(["evaluate", "--checkpoint", checkpoint, "--out", str(tmp_path / "no" / "x.json")]) == 2
    assert "does not exist" in capsys.readouterr().err
    for options in (["--max-images", "0"], ["--length-alpha", "nan"], ["--features", str(tmp_path / "f")]):
        assert main(["evaluate", "--checkpoint", checkpoint, *options]) == 2
        err = capsys.readouterr().err
        assert "must be" in err or "--features is for checkpoints of a photo folder" in err


def test_file_system_errors_are_user_errors_naming_the_path(tmp_path, monkeypatch):
    import errno
    import tempfile
    from captioning.cli import _is_user_error
    from nn.persist import atomic_write
    assert _is_user_error(PermissionError(errno.EACCES, "Permission denied", "x"))
    assert _is_user_error(OSError(errno.EROFS, "Read-only file system", "x"))
    assert not _is_user_error(OSError(errno.EIO, "I/O error", "x"))   # not the user's doing: traceback
    with pytest.raises(IsADirectoryError, match=str(tmp_path)):
        with atomic_write(tmp_path) as f:
            f.write(b"x")

    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / ".out.json.123.tmp"))
    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(PermissionError) as info:
        with atomic_write(tmp_path / "out.json") as f:
            f.write(b"x")
    assert info.value.filename == str(tmp_path / "out.json")      # the file asked for, not the temporary one


def test_features_and_train_refuse_an_empty_or_protected_data_set(tmp_path, capsys):
    from data_fixtures import make_original, tiny_corpus
    splits, captions = tiny_corpus()
    root = make_original(tmp_path / "flickr", splits, captions)
    inside = root / "Flicker8k_Dataset" / "cache"
    assert main(["features", "--data", str(root), "--out", str(inside), "--no-progress"]) == 2
    assert "inside the data folder" in capsys.readouterr().err
    assert not any(p.name.startswith("cache") for p in (root / "Flicker8k_Dataset").iterdir())
    empty = make_original(tmp_path / "empty", splits, captions)
    for photo in (empty / "Flicker8k_Dataset").iterdir():   # the files list photos that are not there
        photo.unlink()
    assert main(["features", "--data", str(empty), "--out", str(tmp_path / "f"), "--no-progress"]) == 2
    assert "no photos to encode" in capsys.readouterr().err
    no_dev = make_original(tmp_path / "no_dev", *tiny_corpus(n_train=4, n_dev=0, n_test=2),
                           extra_split_ids={"train": ["missing.jpg"]})
    cache = tmp_path / "no_dev_features"
    assert main(["features", "--data", str(no_dev), "--out", str(cache), "--no-progress"]) == 0
    assert "note: skipped 1 split-list ids with no image file (e.g. missing.jpg)" in capsys.readouterr().err
    assert main(["train", "--data", str(no_dev), "--features", str(cache), "--out", str(tmp_path / "run")]) == 2
    assert "the dev split is empty" in capsys.readouterr().err and not (tmp_path / "run").exists()


def test_train_and_evaluate_never_write_into_the_data_folder(tmp_path, capsys):
    from data_fixtures import make_original, tiny_corpus
    root = make_original(tmp_path / "flickr", *tiny_corpus())
    cache = tmp_path / "features"
    assert main(["features", "--data", str(root), "--out", str(cache), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["train", "--data", str(root), "--features", str(cache), "--out", str(root / "run")]) == 2
    assert "lies inside the data folder" in capsys.readouterr().err and not (root / "run").exists()
    a_file = tmp_path / "run_file"
    a_file.write_text("x")
    assert main(["train", "--data", str(root), "--features", str(cache), "--out", str(a_file)]) == 2
    assert "is a file; give a folder" in capsys.readouterr().err
    run = tmp_path / "run"
    assert main(["train", "--data", str(root), "--features", str(cache), "--epochs", "1", "--min-count", "1",
                 *TINY_MODEL, "--quiet", "--out", str(run)]) == 0
    capsys.readouterr()
    inside = root / "Flickr8k_text" / "scores.json"
    assert main(["evaluate", "--checkpoint", str(run / "best.npz"), "--out", str(inside)]) == 2
    assert "lies inside the data folder" in capsys.readouterr().err and not inside.exists()


def test_ctrl_c_during_train_saves_and_exits_130(tmp_path, capsys, monkeypatch):
    import signal
    from captioning.training import Trainer
    real_step = Trainer.train_step

    def train_step(self, epoch, batch):             # as if Ctrl-C came during the first step
        result = real_step(self, epoch, batch)
        if not self.interrupted:
            self._request_stop(signal.SIGINT, None)
        return result
    monkeypatch.setattr(Trainer, "train_step", train_step)
    out = tmp_path / "run"
    assert main(["train", "--max-images", "12", "--epochs", "1", "--batch-size", "4", *TINY_MODEL,
                 "--out", str(out)]) == 130
    printed = capsys.readouterr().out
    assert "resume with --resume" in printed and "next:" not in printed
    assert (out / "last.npz").is_file()


@pytest.mark.parametrize("options, message", [
    (["--timeout", "-1"], "--timeout must be a number of seconds > 0"),
    (["--timeout", "nan"], "--timeout must be a number of seconds > 0"),
    (["--url-base", "foo"], "--url-base must be an http"),
])
def test_download_checks_its_options_before_any_network(tmp_path, capsys, options, message):
    assert main(["download", "--dest", str(tmp_path / "d"), *options]) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "d").exists()
    a_file = tmp_path / "afile"
    a_file.write_text("x")
    assert main(["download", "--dest", str(a_file)]) == 2
    assert "is a file; give a folder" in capsys.readouterr().err


def test_caption_goes_on_past_an_unreadable_image_and_exits_2(shapes_run, capsys, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    good = [str(shapes_run / "sample_0.png"), str(shapes_run / "sample_1.png")]
    assert main(["caption", good[0], str(bad), good[1], "--checkpoint", str(shapes_run / "best.npz")]) == 2
    captured = capsys.readouterr()
    assert [line.split(":")[0] for line in captured.out.splitlines()] == good
    assert f"cannot decode image {bad}" in captured.err and "1 of 3 images could not be read" in captured.err


def test_a_shapes_model_warns_once_that_it_only_knows_shapes(shapes_run, capsys, tmp_path):
    photos = []
    for name in ("a.jpg", "b.jpg"):
        Image.fromarray(numpy.full((120, 160, 3), 128, numpy.uint8)).save(tmp_path / name)
        photos.append(str(tmp_path / name))
    assert main(["caption", *photos, "--checkpoint", str(shapes_run / "best.npz")]) == 0
    assert capsys.readouterr().err.count("only knows coloured circles, squares and triangles") == 1
    assert main(["caption", str(shapes_run / "sample_0.png"), "--checkpoint", str(shapes_run / "best.npz")]) == 0
    assert "only knows" not in capsys.readouterr().err       # its own kind of picture: no note


def test_caption_without_checkpoint_uses_the_shipped_model_or_says_there_is_none(shapes_run, capsys,
                                                                                 monkeypatch, tmp_path):
    from captioning import pretrained
    monkeypatch.setattr(pretrained, "PRETRAINED_DIR", tmp_path)
    assert main(["caption", str(shapes_run / "sample_0.png")]) == 2
    assert "this install has no shipped captioner_flickr8k" in capsys.readouterr().err
    (tmp_path / f"{pretrained.CAPTIONER}.npz").write_bytes((shapes_run / "best.npz").read_bytes())
    (tmp_path / f"{pretrained.CAPTIONER}.json").write_text(
        json.dumps({"model": "Show, Attend and Tell", "data": "shapes", "test_scores": {"BLEU-4": 50.0}}))
    assert main(["caption", str(shapes_run / "sample_0.png")]) == 0
    captured = capsys.readouterr()
    assert "using the shipped model captioner_flickr8k: Show, Attend and Tell" in captured.err
    assert captured.out.startswith(str(shapes_run / "sample_0.png") + ": ")


def test_evaluate_html_writes_a_results_page_with_rouge(shapes_run, capsys, tmp_path):
    page = tmp_path / "page"
    assert main(["evaluate", "--checkpoint", str(shapes_run / "best.npz"), "--max-images", "5",
                 "--out", str(tmp_path / "c.json"), "--html", str(page)]) == 0
    printed = capsys.readouterr().out
    assert "ROUGE-L" in printed and f"results page: {page / 'index.html'}" in printed
    html = (page / "index.html").read_text(encoding="utf-8")
    assert html.count("data-cider=") == 5 and html.count('class="attention"') == 5
    assert json.loads((tmp_path / "c.json").read_text())["scores"]["ROUGE-L"] > 0


def test_block_bad_endings_reaches_the_decoders_and_the_settings(shapes_run, capsys, tmp_path, monkeypatch):
    """--block-bad-endings gives both decoders, through evaluate and caption, the vocabulary ids of
    captioning.generation.BAD_ENDINGS; without it they get none. evaluate records it in "settings"."""
    from captioning import decoding, generation
    from captioning.checkpoint import load_checkpoint

    checkpoint = str(shapes_run / "best.npz")
    vocabulary = load_checkpoint(checkpoint).vocabulary
    expected = generation.bad_ending_ids(vocabulary)
    assert vocabulary.word_to_id["a"] in expected and vocabulary.word_to_id["the"] in expected
    calls = []

    def spy(name, decode):
        def recorded(*args, **kwargs):
            calls.append((name, tuple(kwargs.get("bad_ending_ids", ()))))
            return decode(*args, **kwargs)
        return recorded
    for name in ("greedy_decode", "beam_search"):
        recorded = spy(name, getattr(decoding, name))
        for module in (decoding, generation):   # generation imported the decoders by name
            monkeypatch.setattr(module, name, recorded)

    for beam, decoder in (("1", "greedy_decode"), ("2", "beam_search")):
        for flag in ([], ["--block-bad-endings"]):
            out = tmp_path / f"captions{beam}{len(flag)}.json"
            calls.clear()
            assert main(["evaluate", "--checkpoint", checkpoint, "--split", "test", "--beam", beam,
                         "--max-images", "7", "--out", str(out), *flag]) == 0
            assert calls == [(decoder, expected if flag else ())]
            assert ("no bad endings" in capsys.readouterr().out) == bool(flag)
            record = json.loads(out.read_text())
            assert record["settings"]["block_bad_endings"] is bool(flag)
            calls.clear()
            assert main(["caption", str(shapes_run / "sample_0.png"), "--checkpoint", checkpoint,
                         "--beam", beam, *flag]) == 0
            assert calls == [(decoder, expected if flag else ())]
    capsys.readouterr()


@pytest.mark.parametrize("command", ["train", "evaluate", "caption", "features", "align"])
def test_help_examples_keep_their_shell_line_continuations(command, capsys):
    """An example broken over two lines with a shell `\\` must print as two lines: in a plain
    (not raw) string a lone backslash at the end of a line joins the lines, and --help then shows
    one long line with a run of spaces in the middle of the command."""
    with pytest.raises(SystemExit):
        main([command, "--help"])
    lines = capsys.readouterr().out.splitlines()
    joined = [line for line in lines if line.lstrip().startswith("python -m captioning") and "       --" in line]
    assert not joined, joined
    continued = [k for k, line in enumerate(lines) if line.startswith("  python -m captioning")
                 and line.endswith("\\")]
    assert all(lines[k + 1].startswith("      --") for k in continued)
