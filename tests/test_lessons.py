"""The lessons and their runner.

Every lesson runs in-process with --no-pause --quick (saves an interpreter
start-up per lesson) and must finish cleanly; its own checks are the test.
The runner's behaviour (list, unknown lesson, failing check, pauses) is
tested on tiny fake lessons written to a temporary folder.
"""
import inspect
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy
import pytest

from captioning.checkpoint import load_checkpoint
from captioning.encoders.efficientnet import EfficientNetLite0
from captioning.features import extract_features
from captioning.training import Trainer
from data_fixtures import make_original, tiny_corpus
from nn import backend

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import run_lesson  # noqa: E402

LESSONS = run_lesson.lesson_files(ROOT / "lessons")
FLICKR8K_RUN = 13             # minutes even with --quick: its own tests below
NEEDS_DATA = {6, 13}          # these stop cleanly (and are skipped here) without Flickr8k / weights
EXERCISE_LESSONS = [3, 4, 5, 7, 8, 10, 11, 12, 14, 16, 17]   # lessons with --exercise: each graded in test_exercise_fails_on_the_stub_...


def lesson_params():
    """Lessons run to the end here; those with exercises run to the end in their exercise test instead
    (its reference pass is the whole lesson with the reference functions, under the same guards)."""
    return [pytest.param(n, id=f"lesson{n:02d}") for n in LESSONS
            if n != FLICKR8K_RUN and n not in EXERCISE_LESSONS]


def test_there_are_at_least_twelve_lessons_with_titles_and_times(capsys):
    assert len(LESSONS) >= 12, sorted(LESSONS)
    assert run_lesson.main(["--list"]) == 0
    listing = capsys.readouterr().out
    for number, path in LESSONS.items():
        title, seconds, _ = run_lesson.lesson_info(path)
        assert isinstance(seconds, (int, float)), f"{path.name} needs SECONDS = rough running time"
        assert title != path.stem, f"{path.name} needs a TITLE"
        assert f"{number:2d}  {title}" in listing


class NumpyWithoutItsGenerator:
    """NumPy as the backend's array module, minus `random`: CuPy's generator gives other numbers than
    NumPy's for the same seed, so a lesson that drew data with the backend's generator (`backend.rng`,
    `backend.xp().random`) would print different numbers on CuPy. Here it fails instead."""

    def __getattr__(self, name):
        if name == "random":
            raise AssertionError("a lesson drew random numbers with the backend's generator (CuPy's gives other "
                                 "numbers): draw with ctx.rng(seed), NumPy's numbers moved to the backend")
        return getattr(numpy, name)


@pytest.mark.parametrize("number", lesson_params())
def test_lesson_runs_to_the_end(number, tmp_path, capsys, monkeypatch):
    """... with data drawn by NumPy, never by the backend's generator (lesson 2, about the backend switch
    itself, compares array modules by identity and runs unguarded)."""
    if number != 2:
        guard_the_backend_generator(monkeypatch)
    args = [str(number), "--no-pause", "--quick", "--out", str(tmp_path)]
    status = run_lesson.main(args)
    out, err = capsys.readouterr()
    assert status == 0, f"lesson {number} failed:\n{err[-3000:]}\n{out[-3000:]}"
    if "Lesson stopped" in out and number in NEEDS_DATA:
        pytest.skip(out.strip().splitlines()[-2])
    assert "Lesson done" in out, out[-2000:]
    assert_pictures_are_pngs(tmp_path)


def guard_the_backend_generator(monkeypatch):
    monkeypatch.setitem(backend._state, "name", "numpy")
    monkeypatch.setitem(backend._state, "xp", NumpyWithoutItsGenerator())


def assert_pictures_are_pngs(folder):
    for path in folder.glob("*"):              # pictures a lesson wrote are real PNGs
        if path.suffix == ".png":
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path


def test_flickr8k_lesson_without_data_says_how_to_get_it(tmp_path, capsys):
    missing = tmp_path / "no-flickr8k-here"
    status = run_lesson.main([str(FLICKR8K_RUN), "--no-pause", "--quick", "--data", str(missing),
                              "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert status == 0
    assert "python -m captioning download --dest DIR" in out and "Lesson stopped at step 1" in out
    assert not (tmp_path / "features").exists()


@pytest.mark.slow
def test_flickr8k_lesson_quick_run(tmp_path, capsys):
    """The full --quick run (feature extraction + about a minute of training): set LESSONS_SLOW=1."""
    if os.environ.get("LESSONS_SLOW") != "1":
        pytest.skip("lesson 13 takes minutes even with --quick; run it with LESSONS_SLOW=1")
    if run_lesson.data_folder(None) is None:
        pytest.skip("Flickr8k not found: set FLICKR8K_DIR or place it at ../shared/flickr8k")
    status = run_lesson.main([str(FLICKR8K_RUN), "--no-pause", "--quick", "--out", str(tmp_path)])
    out, err = capsys.readouterr()
    assert status == 0, err[-3000:]
    assert "Lesson done" in out
    assert (tmp_path / "lesson13_attention.png").read_bytes()[:4] == b"\x89PNG"


class FakeCNN:
    """Stands in for EfficientNet-Lite0 in lesson 13: the 7x7x1280 grid of its shape, in milliseconds.

    (No pretrained weights needed, and no second of CNN work per photo.)
    """
    name = "fake_cnn"
    version = "1"
    preprocess = {"size": 7, "resize": "squash", "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}

    def features(self, images):                          # (n, 3, 7, 7) -> grid (n, 49, 1280), pooled (n, 1280)
        pixels = images.reshape(len(images), 3, 49).transpose(0, 2, 1)
        grid = numpy.tile(pixels, (1, 1, 427))[:, :, :1280]
        return grid, grid.mean(axis=1)


@pytest.fixture
def small_flickr8k(tmp_path, monkeypatch):
    """A trimmed Flickr8k in its original layout (6 / 2 / 2 photos), and the fake CNN for lesson 13."""
    monkeypatch.setattr(EfficientNetLite0, "from_pretrained", classmethod(lambda cls, *a, **k: FakeCNN()))
    return make_original(tmp_path / "flickr8k", *tiny_corpus(n_train=6, n_dev=2, n_test=2))


def flickr8k_steps(data, out, quick, steps):
    """Run the first steps of lesson 13 directly; returns (ctx, the last step's results)."""
    lesson = run_lesson.load_lesson(LESSONS[FLICKR8K_RUN])
    ctx = run_lesson.Context(quick=quick, data=data, out_dir=out)
    for step in run_lesson.lesson_steps(lesson)[:steps]:
        results = step(ctx)
    return ctx, results


@pytest.mark.parametrize("quick", [True, False], ids=["quick", "full"])
def test_flickr8k_lesson_takes_whole_splits_smaller_than_its_slice(small_flickr8k, tmp_path, capsys, quick):
    ctx, results = flickr8k_steps(small_flickr8k, tmp_path / "out", quick, steps=2)
    assert results["images"] == {"train": 6, "dev": 2, "test": 2}
    out = capsys.readouterr().out
    wanted = run_lesson.load_lesson(LESSONS[FLICKR8K_RUN]).SIZES["quick" if quick else "full"]["train"]
    assert f"the train split has 6 photos, fewer than the {wanted} of this slice: using all of them" in out


def test_flickr8k_lesson_stops_on_an_empty_split(tmp_path):
    splits, captions = tiny_corpus(n_train=3, n_dev=0, n_test=1)
    root = make_original(tmp_path / "flickr8k", splits, captions)
    with pytest.raises(run_lesson.StopLesson, match="dev split .* has no photos"):
        flickr8k_steps(root, tmp_path / "out", quick=True, steps=2)


def test_flickr8k_lesson_writes_its_feature_cache_under_out_and_reuses_the_features_command_one(
        small_flickr8k, tmp_path, monkeypatch):
    """Without --quick too: the lesson's own cache goes under --out, never into the project folder;
    the cache of `python -m captioning features` is looked for where that command writes it,
    ./outputs/features under the current folder."""
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    _, results = flickr8k_steps(small_flickr8k, tmp_path / "out", quick=False, steps=3)
    assert results["cache"] == f"{tmp_path / 'out' / 'features' / 'flickr8k_lesson13_10'} (made now)"
    assert not (ROOT / "outputs" / "features" / "flickr8k_fake_cnn.json").exists()
    assert list(elsewhere.iterdir()) == []

    # the `features` command's default cache, made from the current folder, is reused
    shared = Path("outputs") / "features" / "flickr8k_fake_cnn"
    split = tiny_corpus(n_train=6, n_dev=2, n_test=2)[0]
    ids = split["train"] + split["dev"] + split["test"]
    extract_features(FakeCNN(), [small_flickr8k / "Flicker8k_Dataset" / i for i in ids], ids, shared,
                     progress=False)
    _, results = flickr8k_steps(small_flickr8k, tmp_path / "out2", quick=False, steps=3)
    assert results["cache"] == f"{shared} (reused)"
    assert not (tmp_path / "out2" / "features").exists()


def interrupt_the_first_training_step(monkeypatch):
    """Every Trainer acts as if Ctrl-C came during its first step: it calls what its SIGINT handler
    calls (no real signal, so no race with the clock), then, as then, finishes the step and returns."""
    real_step = Trainer.train_step

    def train_step(self, epoch, batch):
        result = real_step(self, epoch, batch)
        if not self._stop_requested:
            self._request_stop(signal.SIGINT, None)
        return result
    monkeypatch.setattr(Trainer, "train_step", train_step)


@pytest.mark.parametrize("number", [1, 11, FLICKR8K_RUN])
def test_ctrl_c_while_a_lesson_trains_ends_it_with_status_130(number, tmp_path, capsys, monkeypatch,
                                                             small_flickr8k):
    interrupt_the_first_training_step(monkeypatch)
    status = run_lesson.main([str(number), "--no-pause", "--quick", "--data", str(small_flickr8k),
                              "--out", str(tmp_path / "out")])
    out, err = capsys.readouterr()
    assert status == 130, err[-3000:]
    assert "stopped at epoch 1, step 1" in out                 # the Trainer's own line ...
    assert "--resume" not in out + err                         # ... without advice lessons cannot follow
    assert "Interrupted at step 4 (" in err and "Lesson done" not in out and "Step 5/" not in out


def test_ctx_fit_returns_the_history_when_training_was_not_interrupted():
    class StubTrainer:
        interrupted = False

        def fit(self):
            return [{"epoch": 1}]
    stub = StubTrainer()
    assert run_lesson.Context().fit(stub) == [{"epoch": 1}]
    assert stub.resume_hint is None          # lessons have no --resume to advise


def write_lesson(folder, number, body):
    path = Path(folder) / f"lesson_{number:02d}_fake.py"
    path.write_text(textwrap.dedent(body))
    return path


FAKE = '''
    """A fake lesson for testing the runner."""
    TITLE = "Fake lesson"
    SECONDS = 1

    def step_1_first(ctx):
        """First step title.

        Its explanation.
        """
        value = 6 * 7
        ctx.answer = value
        return {"answer": value}

    def step_2_second(ctx):
        """Second step reads what the first stored."""
        print("the answer was", ctx.answer)
        ctx.check(ctx.answer == WANTED, "the answer is wrong")

    def step_3_third(ctx):
        """Third step."""
        print("third step ran")
'''


def test_runner_shows_explanation_code_and_results(tmp_path, capsys):
    write_lesson(tmp_path, 1, FAKE.replace("WANTED", "42"))
    assert run_lesson.main(["1", "--no-pause", "--lessons-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "Step 1/3: First step title." in out and "Its explanation." in out
    assert "value = 6 * 7" in out                       # the code is shown...
    assert '"""First step title.' not in out            # ...without its docstring
    assert "answer = 42" in out and "the answer was 42" in out and "third step ran" in out
    assert "Lesson done: 3 steps" in out


def test_failing_check_exits_non_zero_naming_the_step(tmp_path, capsys):
    write_lesson(tmp_path, 1, FAKE.replace("WANTED", "41"))
    assert run_lesson.main(["1", "--no-pause", "--lessons-dir", str(tmp_path)]) == 1
    out, err = capsys.readouterr()
    assert "step 2 (step_2_second: Second step reads what the first stored.)" in err
    assert "the answer is wrong" in err
    assert "third step ran" not in out


def test_error_in_a_step_exits_non_zero(tmp_path, capsys):
    write_lesson(tmp_path, 4, FAKE.replace("WANTED", "1 / 0"))
    assert run_lesson.main(["4", "--no-pause", "--lessons-dir", str(tmp_path)]) == 1
    assert "FAILED at step 2" in capsys.readouterr().err


def test_stop_ends_cleanly(tmp_path, capsys):
    body = FAKE.replace('ctx.check(ctx.answer == WANTED, "the answer is wrong")', 'ctx.stop("no data here")')
    write_lesson(tmp_path, 1, body)
    assert run_lesson.main(["1", "--no-pause", "--lessons-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "no data here" in out and "Lesson stopped at step 2" in out and "third step ran" not in out


def test_unknown_lesson_prints_the_list_and_fails(tmp_path, capsys):
    write_lesson(tmp_path, 1, FAKE.replace("WANTED", "42"))
    assert run_lesson.main(["7", "--lessons-dir", str(tmp_path)]) == 2
    out, err = capsys.readouterr()
    assert "no lesson 7" in err and " 1  Fake lesson" in out
    assert run_lesson.main(["999"]) == 2


def test_runner_refuses_odd_paths_and_lists_broken_lesson_files(tmp_path, capsys):
    write_lesson(tmp_path, 1, FAKE.replace("WANTED", "42"))
    (tmp_path / "lesson_02_broken.py").write_text("def (:\n")
    (tmp_path / "lesson_03_odd.py").write_text('TITLE = "Odd"\nSECONDS = "a lot"\n')
    assert run_lesson.main(["--list", "--lessons-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "lesson_02_broken.py: cannot be read (SyntaxError, line 1)" in out and " 3  Odd  []" in out
    notes = tmp_path / "notes.txt"
    notes.write_text("not a lesson")
    assert run_lesson.main([str(notes), "--lessons-dir", str(tmp_path)]) == 2
    assert f"no lesson file {notes}" in capsys.readouterr().err
    assert run_lesson.main(["1", "--lessons-dir", str(tmp_path / "nope")]) == 2
    assert "lessons folder" in capsys.readouterr().err
    assert run_lesson.main(["1", "--lessons-dir", str(tmp_path), "--out", str(notes)]) == 2
    assert f"--out {notes} is a file" in capsys.readouterr().err


@pytest.mark.parametrize("answers, ran, stopped", [
    (["", "q"], ["the answer was 42"], "Stopped after step 2 of 3."),
    (["a"], ["the answer was 42", "third step ran"], None),
    (["", ""], ["the answer was 42", "third step ran"], None),
])
def test_pauses_enter_continues_a_runs_all_q_quits(tmp_path, capsys, monkeypatch, answers, ran, stopped):
    path = write_lesson(tmp_path, 1, FAKE.replace("WANTED", "42"))
    prompts = []
    replies = iter(answers)
    monkeypatch.setattr("builtins.input", lambda prompt: prompts.append(prompt) or next(replies))
    assert run_lesson.run(path, run_lesson.Context(out_dir=tmp_path), pause=True) == 0
    out = capsys.readouterr().out
    for text in ran:
        assert text in out
    assert len(prompts) == len(answers)
    if stopped:
        assert stopped in out and "third step ran" not in out
    else:
        assert "Lesson done" in out


def test_a_lesson_file_runs_on_its_own_and_without_a_terminal():
    """`python lessons/lesson_02_arrays.py` works, and stdin that is not a TTY means no pauses."""
    result = subprocess.run([sys.executable, str(LESSONS[2])], stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert "Lesson done" in result.stdout and "[Enter]" not in result.stdout


@pytest.mark.gpu
def test_backend_flag_runs_a_lesson_on_cupy(tmp_path, capsys):
    if not backend.cupy_available():
        pytest.skip("CuPy is not installed or no GPU is visible")
    assert run_lesson.main(["3", "--no-pause", "--backend", "cupy", "--out", str(tmp_path)]) == 0
    assert "Lesson done" in capsys.readouterr().out


def test_flickr8k_lesson_runs_on_a_trimmed_copy_and_evaluates_best_npz(small_flickr8k, tmp_path, capsys):
    """The whole lesson on 6 / 2 / 2 photos with the fake CNN; the model it evaluates is best.npz's,
    not the trainer's last weights."""
    ctx, _ = flickr8k_steps(small_flickr8k, tmp_path / "out", quick=True, steps=len(
        run_lesson.lesson_steps(run_lesson.load_lesson(LESSONS[FLICKR8K_RUN]))))
    best = load_checkpoint(tmp_path / "out" / "lesson13_run" / "best.npz").model
    last = load_checkpoint(tmp_path / "out" / "lesson13_run" / "last.npz").model
    evaluated = ctx.model.state_dict()
    assert all(numpy.array_equal(evaluated[k], v) for k, v in best.state_dict().items())
    assert not all(numpy.array_equal(evaluated[k], v) for k, v in last.state_dict().items())
    assert "test photo 1: model:" in capsys.readouterr().out
    assert (tmp_path / "out" / "lesson13_attention.png").read_bytes()[:4] == b"\x89PNG"


def test_flickr8k_lesson_reads_the_features_cache_it_is_given_or_stops(small_flickr8k, tmp_path, capsys):
    split = tiny_corpus(n_train=6, n_dev=2, n_test=2)[0]
    ids = split["train"] + split["dev"] + split["test"]
    given = tmp_path / "given" / "flickr8k_fake_cnn"
    extract_features(FakeCNN(), [small_flickr8k / "Flicker8k_Dataset" / i for i in ids], ids, given, progress=False)
    lesson = run_lesson.load_lesson(LESSONS[FLICKR8K_RUN])
    ctx = run_lesson.Context(quick=True, data=small_flickr8k, out_dir=tmp_path / "out", features=str(given))
    for step in run_lesson.lesson_steps(lesson)[:2]:
        step(ctx)
    assert run_lesson.lesson_steps(lesson)[2](ctx)["cache"] == f"{given} (reused)"
    assert not (tmp_path / "out" / "features").exists()

    status = run_lesson.main([str(FLICKR8K_RUN), "--no-pause", "--quick", "--data", str(small_flickr8k),
                              "--features", str(tmp_path / "nope"), "--out", str(tmp_path / "out2")])
    out = capsys.readouterr().out
    assert status == 0 and f"--features {tmp_path / 'nope'} cannot be used" in out and "Lesson stopped at step 3" in out


# ------------------------------------------------------------------ exercises

LIBRARY_EXERCISES = {3: "nn.dense", 4: "nn.losses", 5: "nn.conv", 7: "nn.recurrent", 8: "nn.recurrent",
                     11: "nn.attention"}


def reference_solution(number):
    """An exercise file holding the reference functions of a lesson's EXERCISES."""
    lesson = run_lesson.load_lesson(LESSONS[number])
    if number in LIBRARY_EXERCISES:      # library functions: imported (their source uses nn's private checks)
        return f"from {LIBRARY_EXERCISES[number]} import {', '.join(lesson.EXERCISES)}\n"
    sources = [inspect.getsource(getattr(lesson, name)) for name in lesson.EXERCISES]
    return "\n".join(lesson.EXERCISE_IMPORTS) + "\n\n\n" + "\n\n".join(sources)


WRONG = {   # one plausible mistake per exercise lesson: each must fail its grading
    8: ("from nn.recurrent import lstm_step_backward\n"
        "from nn.dense import sigmoid\n"
        "import numpy\n"
        "def lstm_step_forward(x, prev_h, prev_c, Wx, Wh, b):\n"
        "    H = prev_h.shape[1]\n"
        "    a = x @ Wx + prev_h @ Wh + b\n"
        "    f, i, o = sigmoid(a[:, :H]), sigmoid(a[:, H:2 * H]), sigmoid(a[:, 2 * H:3 * H])  # i and f swapped\n"
        "    g = numpy.tanh(a[:, 3 * H:])\n"
        "    c = f * prev_c + i * g\n"
        "    return o * numpy.tanh(c), c, (x, prev_h, prev_c, Wx, Wh, i, f, o, g, numpy.tanh(c))\n",
        "lstm_step_forward: FAIL"),
    12: (None, "brevity_penalty: FAIL"),
    16: (None, "ranking_loss: FAIL"),
    17: (None, "policy_gradient: FAIL"),
    10: (None, "beam_search_one_image: FAIL"),
    5: ("from nn.conv import conv_forward_naive\n"
        "from nn.conv import conv_backward_naive as right\n"
        "def conv_backward_naive(dout, cache):\n"
        "    dx, dw, db = right(dout, cache)\n"
        "    return dx, dw, dout.sum(axis=(0, 2, 3)) / len(dout)     # db averaged over the images\n",
        "conv_backward_naive: FAIL"),
    11: ("from nn import backend\n"
         "def attention_forward(features, h, W_feat, W_hidden, b, w_score):\n"
         "    xp = backend.get_array_module(features)\n"
         "    scores = xp.tanh(features @ W_feat + b + (h @ W_hidden)[:, None, :]) @ w_score   # (N, L)\n"
         "    alpha = xp.exp(scores) / xp.exp(scores).sum(axis=0, keepdims=True)   # softmax over the batch\n"
         "    return (alpha[:, :, None] * features).sum(axis=1), alpha, None\n",
         "attention_forward: FAIL"),
    3: ("from nn.dense import affine_forward, relu_backward\n"
        "def affine_backward(dout, cache):\n"
        "    x, w = cache\n"
        "    dx, dw = (dout @ w.T).reshape(x.shape), x.reshape(len(x), -1).T @ dout\n"
        "    return dx, dw, dout.mean(axis=0)           # mean instead of sum\n",
        "affine_backward: FAIL"),
    4: ("import numpy\n"
        "from nn.losses import softmax_loss\n"
        "def softmax(x, axis=-1):\n"
        "    e = numpy.exp(x)                       # not shifted: overflows for large scores\n"
        "    return e / e.sum(axis=axis, keepdims=True)\n",
        "softmax: FAIL"),
    14: ("from nn import backend\n"
         "def mix_inputs(true_words, own_words, p, gen):\n"
         "    replace = gen.random(true_words.shape) < p              # <START> may be replaced too\n"
         "    return backend.xp().where(replace, own_words, true_words)\n",
         "mix_inputs: FAIL"),
    7: ("import numpy\n"
        "from nn.recurrent import word_embedding_forward\n"
        "def word_embedding_backward(dout, cache):\n"
        "    x, W = cache\n"
        "    dW = numpy.zeros_like(W)\n"
        "    dW[x] = dout                           # assignment keeps only one use of a repeated word\n"
        "    return dW\n",
        "word_embedding_backward: FAIL"),
}


@pytest.mark.filterwarnings("ignore::RuntimeWarning")   # the plausible mistakes overflow on purpose
@pytest.mark.parametrize("number", EXERCISE_LESSONS)
def test_exercise_fails_on_the_stub_and_passes_on_the_reference(number, tmp_path, capsys, monkeypatch):
    """... and the reference pass runs the whole lesson (test_lesson_runs_to_the_end leaves these lessons
    to this test), with data drawn by NumPy, never by the backend's generator."""
    guard_the_backend_generator(monkeypatch)
    exercises = tmp_path / "exercises"
    args = [str(number), "--exercise", "--quick", "--exercise-dir", str(exercises), "--out", str(tmp_path / "out")]
    lesson = run_lesson.load_lesson(LESSONS[number])
    library_before = {name: getattr(lesson, name) for name in lesson.EXERCISES}

    assert run_lesson.main(args) == 1                                  # the stubs: written, then failed
    out = capsys.readouterr().out
    mine = exercises / LESSONS[number].name
    assert f"Wrote {mine}" in out and (exercises / ".gitignore").read_text().endswith("*\n")
    for name in lesson.EXERCISES:
        assert f"{name}: FAIL - not written yet" in out and f"def {name}(" in mine.read_text()

    mine.write_text(reference_solution(number))
    assert run_lesson.main(args) == 0, capsys.readouterr().err[-2000:]
    out = capsys.readouterr().out
    assert "the lesson's own checks with your functions: passed" in out and "Lesson done" in out
    assert_pictures_are_pngs(tmp_path / "out")
    for name in lesson.EXERCISES:
        assert f"{name}: PASS" in out
    assert mine.read_text() == reference_solution(number)               # the learner's file is never overwritten

    wrong, failure = WRONG[number]
    if wrong is None:                    # lesson 12: ties going to the LONGER reference
        wrong = reference_solution(number).replace("(abs(length - hypothesis_length), length)",
                                                   "(abs(length - hypothesis_length), -length)")
        if number == 10:                 # extensions ranked worst first
            wrong = reference_solution(number).replace("reverse=True", "reverse=False")
        if number == 16:                 # images for a sentence forgotten: one direction only
            wrong = reference_solution(number).replace("(rows.sum() + cols.sum())", "rows.sum()")
        if number == 17:                 # the mask forgotten: steps past a caption's end pushed too
            wrong = reference_solution(number).replace("mask * advantages[:, None] / N", "advantages[:, None] / N")
        assert wrong != reference_solution(number)
    mine.write_text(wrong)
    assert run_lesson.main(args) == 1
    assert failure in capsys.readouterr().out
    relesson = run_lesson.load_lesson(LESSONS[number])                  # the library was never touched
    for name, function in library_before.items():
        assert getattr(relesson, name).__code__.co_code == function.__code__.co_code


def test_solution_shows_the_reference_and_lessons_without_exercises_say_so(capsys):
    assert run_lesson.main(["8", "--solution"]) == 0
    out = capsys.readouterr().out
    assert "def lstm_step_forward(" in out and "def lstm_step_backward(" in out and "next_c = f * prev_c" in out
    assert run_lesson.main(["2", "--exercise"]) == 2
    wanted = ", ".join(map(str, EXERCISE_LESSONS))
    assert f"lesson 2 has no exercises (lessons with exercises: {wanted})" in capsys.readouterr().err


def test_lessons_never_write_into_the_data_folder(tmp_path, capsys):
    data = tmp_path / "flickr8k"
    data.mkdir()
    for out in (data, data / "runs"):
        assert run_lesson.main(["1", "--no-pause", "--quick", "--data", str(data), "--out", str(out)]) == 2
        assert "which is only read" in capsys.readouterr().err
    assert list(data.iterdir()) == []


def test_show_source_prints_a_library_function_with_its_file_and_line(capsys):
    from nn.conv import conv_forward_naive
    run_lesson.Context().show_source(conv_forward_naive)
    out = capsys.readouterr().out
    line = inspect.getsourcelines(conv_forward_naive)[1]
    assert f"--- source of conv_forward_naive, {Path('nn') / 'conv.py'}:{line}" in out
    assert "  | def conv_forward_naive(x, w, b, conv_param):" in out and "  | \n" in out   # blank lines kept
    assert "out[n, f, i, j] = xp.sum(field * w[f])" in out
    run_lesson.Context().show_source(len)
    assert "(no Python source for len)" in capsys.readouterr().out


def test_ctx_rng_draws_numpys_numbers_onto_the_backend(monkeypatch):
    monkeypatch.setitem(backend._state, "name", "numpy")
    monkeypatch.setitem(backend._state, "xp", NumpyWithoutItsGenerator())
    gen = run_lesson.Context().rng(5)
    drawn = gen.standard_normal((2, 3))
    assert numpy.array_equal(drawn, numpy.random.default_rng(5).standard_normal((2, 3)))
    assert isinstance(gen.uniform(), float)                      # scalars stay Python numbers
    with pytest.raises(AssertionError, match="ctx.rng"):
        backend.rng(5)


def test_lesson14_says_over_how_many_words_it_measured_the_replaced_share(tmp_path):
    """Step 4 measures the share of replaced words on 1000 captions of 12 inputs, position 0
    (<START>) never replaced: 11000 words, which its printed label must say (not 12000)."""
    from captioning.data import Vocabulary

    lesson = run_lesson.load_lesson(LESSONS[14])
    ctx = run_lesson.Context(quick=True, out_dir=tmp_path)
    dev = lesson.one_or_two_objects(4, seed=4, name="dev")
    ctx.vocab = Vocabulary.build(dev.all_tokens(), min_count=1)
    ctx.dev_features, ctx.dev_captions = lesson.cell_colours(dev), lesson.first_captions(dev, ctx.vocab)
    ctx.forced = lesson.new_model(ctx)
    results = lesson.step_4_mix_inputs(ctx)
    label = next(key for key in results if key.startswith("share replaced"))
    assert "(11000 words)" in label, label


@pytest.mark.parametrize("number, steps", [
    (9, ["step_1_data", "step_2_the_model", "step_3_gradient_check"]),
    (17, ["step_1_where_the_image_enters", "step_2_lrcn_gradient_and_decoding"])])
def test_whole_model_gradient_checks_hold_with_twice_the_rounding_noise(number, steps, monkeypatch, tmp_path):
    """Lessons 9 and 17 failed on an H200 because another backend's rounding pushed a relative error
    over 1e-5. Halving h doubles the finite difference's rounding noise: their checks must still pass,
    and still fail a backward pass that is wrong by 1e-3."""
    import functools
    from nn.gradcheck import eval_numerical_gradient

    lesson = run_lesson.load_lesson(LESSONS[number])
    monkeypatch.setattr(lesson, "eval_numerical_gradient", functools.partial(eval_numerical_gradient, h=5e-6))
    ctx = run_lesson.Context(quick=True, out_dir=tmp_path)
    for step in steps:
        getattr(lesson, step)(ctx)
    model_class = lesson.ShowAndTell if number == 9 else lesson.LRCN
    loss = model_class.loss

    def slightly_wrong(self, *args, **kwargs):
        value, grads = loss(self, *args, **kwargs)
        return value, {name: grad * 1.001 if name.startswith("Wh") else grad for name, grad in grads.items()}

    monkeypatch.setattr(model_class, "loss", slightly_wrong)
    with pytest.raises(run_lesson.CheckFailed):
        getattr(lesson, steps[-1])(ctx)


@pytest.mark.parametrize("number", sorted(LESSONS))
def test_lessons_import_only_what_they_use(number):
    """A lesson is read as well as run: an import it no longer uses (left behind when a step
    was rewritten) sends the reader looking for a use that is not there."""
    import ast

    source = LESSONS[number].read_text(encoding="utf-8")
    tree = ast.parse(source)
    imported = {(alias.asname or alias.name).split(".")[0]: node.lineno
                for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
                for alias in node.names}
    used = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
    unused = {name: line for name, line in imported.items() if name not in used}
    assert not unused, f"{LESSONS[number].name}: imported but not used (name: line) {unused}"
