"""The lessons and their runner.

Every lesson runs in-process with --no-pause --quick (saves an interpreter
start-up per lesson) and must finish cleanly; its own checks are the test.
The runner's behaviour (list, unknown lesson, failing check, pauses) is
tested on tiny fake lessons written to a temporary folder.
"""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from nn import backend

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import run_lesson  # noqa: E402

LESSONS = run_lesson.lesson_files(ROOT / "lessons")
FLICKR8K_RUN = 13             # minutes even with --quick: its own tests below
NEEDS_DATA = {6, 13}          # these stop cleanly (and are skipped here) without Flickr8k / weights


def lesson_params():
    return [pytest.param(n, id=f"lesson{n:02d}") for n in LESSONS if n != FLICKR8K_RUN]


def test_there_are_at_least_twelve_lessons_with_titles_and_times(capsys):
    assert len(LESSONS) >= 12, sorted(LESSONS)
    assert run_lesson.main(["--list"]) == 0
    listing = capsys.readouterr().out
    for number, path in LESSONS.items():
        title, seconds, _ = run_lesson.lesson_info(path)
        assert isinstance(seconds, (int, float)), f"{path.name} needs SECONDS = rough running time"
        assert title != path.stem, f"{path.name} needs a TITLE"
        assert f"{number:2d}  {title}" in listing


@pytest.mark.parametrize("number", lesson_params())
def test_lesson_runs_to_the_end(number, tmp_path, capsys):
    args = [str(number), "--no-pause", "--quick", "--out", str(tmp_path)]
    status = run_lesson.main(args)
    out, err = capsys.readouterr()
    assert status == 0, f"lesson {number} failed:\n{err[-3000:]}\n{out[-3000:]}"
    if "Lesson stopped" in out and number in NEEDS_DATA:
        pytest.skip(out.strip().splitlines()[-2])
    assert "Lesson done" in out, out[-2000:]
    for path in tmp_path.iterdir():              # pictures it wrote are real PNGs
        if path.suffix == ".png":
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


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
