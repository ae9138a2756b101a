"""End-to-end runs of `python -m captioning align train / evaluate / search / annotate`
(in process, a tiny shapes run of a few seconds), and their one-line user errors."""
import json

import pytest
from PIL import Image

from captioning.cli import main
from captioning.data.shapes import make_shapes_dataset

TINY = ["--max-images", "30", "--epochs", "1", "--batch-size", "10", "--hidden", "16", "--embed", "8",
        "--lr", "2e-3"]


@pytest.fixture(scope="module")
def align_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("align_run")
    assert main(["align", "train", *TINY, "--out", str(out)]) == 0
    return out


def test_train_writes_checkpoints_and_reports_test_recall(align_run, capsys):
    assert (align_run / "best.npz").is_file() and (align_run / "last.npz").is_file()


def test_resume_continues_the_run(align_run, capsys):
    assert main(["align", "train", *TINY[:2], "--epochs", "2", *TINY[4:], "--out", str(align_run),
                 "--resume"]) == 0
    printed = capsys.readouterr().out
    assert "resumed at epoch 2" in printed and "after epoch 2" in printed and "after epoch 1" not in printed


def test_evaluate_prints_and_writes_recalls(align_run, capsys, tmp_path):
    out = tmp_path / "metrics.json"
    assert main(["align", "evaluate", "--checkpoint", str(align_run / "best.npz"), "--split", "test",
                 "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "test: 30 images, 150 sentences" in printed and "annotation" in printed
    assert "colour and shape words whose best region lies on their shape" in printed
    metrics = json.loads(out.read_text())
    assert set(metrics) == {"annotation", "search"}
    for direction in metrics.values():
        assert set(direction) == {"R@1", "R@5", "R@10", "median_rank"}
        assert 0 <= direction["R@1"] <= direction["R@5"] <= direction["R@10"] <= 100


def test_search_lists_the_top_images(align_run, capsys):
    assert main(["align", "search", "a red circle", "--checkpoint", str(align_run / "best.npz"),
                 "--top", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(".")[0] for line in lines] == ["1", "2", "3"]
    assert all("shapes-test-" in line and "score" in line for line in lines)


def test_annotate_writes_a_png(align_run, capsys, tmp_path):
    shapes = make_shapes_dataset(1, seed=5)
    image = tmp_path / "shape.png"
    Image.fromarray(shapes.images[0].transpose(1, 2, 0)).save(image)
    png = tmp_path / "words.png"
    assert main(["align", "annotate", str(image), "--checkpoint", str(align_run / "best.npz"),
                 "--sentence", "a red circle", "--png", str(png)]) == 0
    printed = capsys.readouterr().out
    assert "red: " in printed and "circle: " in printed
    with Image.open(png) as picture:
        assert picture.width >= 8 * 72
    assert main(["align", "annotate", str(image), "--checkpoint", str(align_run / "best.npz"),
                 "--png", str(tmp_path / "cells.png")]) == 0


@pytest.mark.parametrize("argv, message", [
    (["align", "train", "--features", "x"], "--features needs --data"),
    (["align", "train", "--lr", "0"], "--lr must be > 0"),
    (["align", "train", "--max-minutes", "-1"], "--max-minutes must be >= 0"),
    (["align", "train", "--epochs", "0"], "--epochs must be >= 1"),
    (["align", "search", "zzz", "--checkpoint", "missing.npz"], "checkpoint not found"),
    (["align", "annotate", "missing.png", "--png", "out.png"], "image not found"),
])
def test_user_errors_are_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_query_of_unknown_words_is_a_user_error(align_run, capsys):
    assert main(["align", "search", "zebra giraffe", "--checkpoint", str(align_run / "best.npz")]) == 2
    assert "vocabulary" in capsys.readouterr().err


def test_a_run_out_of_time_resumes_without_an_extra_step(tmp_path, capsys):
    from nn.persist import load_npz
    out = tmp_path / "timed"
    argv = ["align", "train", *TINY, "--max-minutes", "0.00001", "--out", str(out)]
    assert main(argv) == 0
    assert "(time limit)" in capsys.readouterr().out
    steps = load_npz(out / "last.npz")[1]["training"]["progress"]["step"]
    assert steps == 1
    assert main(argv + ["--resume"]) == 0
    assert load_npz(out / "last.npz")[1]["training"]["progress"]["step"] == steps


def test_ctrl_c_saves_a_resumable_checkpoint(tmp_path, capsys, monkeypatch):
    from captioning.alignment.training import AlignTrainer
    from nn.persist import load_npz
    original, calls = AlignTrainer.step, []

    def interrupted_step(self, rows):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(self, rows)
    monkeypatch.setattr(AlignTrainer, "step", interrupted_step)
    out = tmp_path / "stopped"
    assert main(["align", "train", *TINY, "--out", str(out)]) == 130
    progress = load_npz(out / "last.npz")[1]["training"]["progress"]
    assert progress["step"] == 2 and progress["stopped"] == "interrupted"


def test_export_aligner_is_float16_without_optimizer_or_paths(align_run, tmp_path, capsys):
    import numpy
    from captioning.alignment.checkpoint import export_aligner, load_aligner
    from nn.persist import load_npz
    target = export_aligner(align_run / "best.npz", tmp_path / "aligner.npz", card={"model": "test"})
    arrays, meta = load_npz(target)
    assert not any(k.startswith("optim/") for k in arrays)
    assert all(v.dtype == numpy.float16 for k, v in arrays.items() if k.startswith("model/"))
    assert meta["data"].get("root") is None and meta["data"].get("features") is None
    card = json.loads(target.with_suffix(".json").read_text())
    assert card["model"] == "test" and card["parameters"] > 0 and card["size_mb"] > 0
    ckpt = load_aligner(target)
    assert ckpt.model.params["W_m"].dtype == numpy.float32


def _an_error_about_the_data(capsys):
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and ("--data" in err or "$FLICKR8K_DIR" in err) and "Traceback" not in err, err


def test_a_flickr8k_aligner_without_its_folder_asks_for_data(align_run, tmp_path, capsys, monkeypatch):
    # An exported Flickr8k aligner records no folder of the machine it was trained on: it reads
    # --data, else $FLICKR8K_DIR or ../shared/flickr8k, and says in one line what is missing (the
    # folder, or the feature cache and the `features --data` command that makes it).
    from captioning.alignment.checkpoint import load_aligner, save_aligner
    ckpt = load_aligner(align_run / "best.npz")
    path = save_aligner(tmp_path / "f.npz", ckpt.model, ckpt.encoder, ckpt.vocabulary,
                        {"name": "flickr8k", "root": None, "features": None})
    monkeypatch.chdir(tmp_path)             # no feature cache at the default place
    assert main(["align", "evaluate", "--checkpoint", str(path)]) == 2
    _an_error_about_the_data(capsys)
    monkeypatch.setenv("FLICKR8K_DIR", str(tmp_path / "nowhere"))
    assert main(["align", "evaluate", "--checkpoint", str(path)]) == 2
    _an_error_about_the_data(capsys)


def test_the_shipped_aligner_is_the_default_checkpoint(capsys, tmp_path, monkeypatch):
    # Without --checkpoint, search uses captioning/pretrained/aligner_flickr8k.npz.
    from captioning.alignment import app
    assert app.open_checkpoint(None).data["name"] == "flickr8k"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FLICKR8K_DIR", str(tmp_path / "nowhere"))
    assert main(["align", "search", "a dog"]) == 2
    _an_error_about_the_data(capsys)


def test_shapes_defaults_are_the_measured_ones():
    # README, "On the synthetic shapes set": the sum of the cosines, the global term and cell
    # positions, with the learning rate cut after each epoch; Flickr8k keeps the mean at a
    # constant rate, without them.
    from captioning.cli import build_parser
    from captioning.commands.align import _train_options
    name, shapes = _train_options(build_parser().parse_args(["align", "train"]))
    assert name == "shapes" and shapes["average"] is False and shapes["cosine"] == 10.0
    assert shapes["lr_decay"] == 0.6 and shapes["epochs"] == 8 and shapes["max_minutes"] == 8.0
    assert shapes["global_weight"] == 3.0 and shapes["positions"] is True
    name, flickr = _train_options(build_parser().parse_args(["align", "train", "--data", "somewhere"]))
    assert name == "flickr8k" and flickr["average"] is True and flickr["lr_decay"] == 1.0
    assert flickr["global_weight"] == 0.0 and flickr["positions"] is False
    _, changed = _train_options(build_parser().parse_args(["align", "train", "--average", "--lr-decay", "1",
                                                           "--global-weight", "0", "--no-positions"]))
    assert changed["average"] is True and changed["lr_decay"] == 1.0
    assert changed["global_weight"] == 0.0 and changed["positions"] is False


def test_hard_negatives_flag_is_saved_in_the_checkpoint(tmp_path, capsys):
    from captioning.alignment.checkpoint import load_aligner
    out = tmp_path / "hard"
    assert main(["align", "train", *TINY, "--hard-negatives", "--hard-warmup", "1", "--out", str(out)]) == 0
    assert "hardest negatives (VSE++) after 1 epochs of the sum" in capsys.readouterr().out
    ckpt = load_aligner(str(out / "last.npz"))
    assert ckpt.model.config["hardest"] is True and ckpt.training["config"]["hard_warmup"] == 1
    assert main(["align", "train", "--hard-warmup", "-1"]) == 2
    assert "--hard-warmup must be >= 0" in capsys.readouterr().err


def test_global_term_and_cell_positions_are_saved_and_used_by_evaluate_and_search(tmp_path, capsys):
    from captioning.alignment.checkpoint import load_aligner
    out = tmp_path / "global"
    assert main(["align", "train", *TINY, "--global-weight", "2", "--positions", "--out", str(out)]) == 0
    assert "+ 2 x global, cell positions" in capsys.readouterr().out
    ckpt = load_aligner(str(out / "best.npz"))
    assert ckpt.model.config["global_weight"] == 2.0 and ckpt.model.config["position_cells"] == 64   # 8 x 8 grid
    assert {"W_u", "W_q", "P"} <= set(ckpt.model.params)
    assert main(["align", "evaluate", "--checkpoint", str(out / "best.npz"), "--max-images", "20"]) == 0
    assert main(["align", "search", "a red circle", "--checkpoint", str(out / "best.npz"), "--top", "2"]) == 0
    assert "red" in capsys.readouterr().out
    # search scores = the retrieval (and training) score, global term included
    from captioning.alignment import app
    from captioning.alignment.data import encode_sentences
    from captioning.alignment.retrieval import encode_images, sentence_scores
    split = app.shapes_split(ckpt.data, "test", max_images=20)
    hits = app.search(ckpt, split, "a red circle", top=3)
    regions, whole = encode_images(ckpt.model, ckpt.encoder, split.inputs)
    sentence = encode_sentences([[["a", "red", "circle"]]], ckpt.vocabulary)
    column = sentence_scores(ckpt.model, regions, sentence, image_vectors=whole)[:, 0]
    for hit in hits:
        assert abs(hit.score - column[split.image_ids.index(hit.image_id)]) < 1e-4
    assert main(["align", "train", "--global-weight", "-1"]) == 2
    assert "--global-weight must be >= 0" in capsys.readouterr().err
