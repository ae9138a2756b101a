"""Step through a lesson: `python run_lesson.py 5`.

For each step of the lesson this prints the step's title and explanation (the
step function's docstring), shows its code, runs it, shows what came out, and
waits: Enter continues, `a` runs the rest without pausing, `q` quits.

    python run_lesson.py --list             # lessons, titles, rough running times
    python run_lesson.py 1                  # the natural first lesson
    python run_lesson.py 5 --no-pause       # straight through (automatic when stdin is not a terminal)
    python run_lesson.py 11 --quick         # lessons that train something train less
    python run_lesson.py 2 --backend cupy   # run on the GPU (nn.backend.use)
    python run_lesson.py lessons/lesson_05_convolution.py   # a lesson file by path

How a lesson is written (a new lesson needs no change to this runner):
- a file `lessons/lesson_NN_short_name.py` with module constants TITLE (one
  line), SECONDS (rough running time with --no-pause) and, for lessons that
  train something, QUICK_SECONDS (the same with --quick);
- step functions `def step_1_something(ctx):` run in file order (or a module
  list STEPS of functions). The first docstring line is the step's title, the
  rest its explanation;
- `ctx` is the one object steps share: store results as attributes
  (`ctx.model = ...`, read them in later steps). It also carries the run's
  options: `ctx.quick`, `ctx.backend`, `ctx.data` (the Flickr8k folder: --data,
  else $FLICKR8K_DIR, else ../shared/flickr8k when it exists, else None), `ctx.out_dir`,
  `ctx.features` (--features: a feature cache to read, or None),
  and helpers: `ctx.check(condition, message)` (a failed check fails the
  lesson), `ctx.output_path("name.png")` (a file under the outputs folder),
  `ctx.show_source(function)` (print a function's code with its file:line),
  `ctx.rng(seed)` (random data drawn by NumPy, on the backend: the same
  numbers on NumPy and CuPy; lessons never draw with the backend's generator),
  `ctx.stop(message)` (end the lesson early and cleanly, e.g. no data),
  `ctx.fit(trainer)` (train with a captioning.training.Trainer: use it instead
  of `trainer.fit()`, so that Ctrl-C ends the lesson);
- a step shows its results by printing them, or by returning a dict of
  name -> value, printed one per line;
- the file ends with `if __name__ == "__main__": ...run_lesson.main([__file__] + ...)`
  so that `python lessons/lesson_05_convolution.py` runs it on its own.

Exercises: `python run_lesson.py 8 --exercise` writes exercises/lesson_08_*.py,
the learner's own file with stubs (signature and docstring) of the functions
the lesson's EXERCISES list names; run again after filling them in, and the
lesson runs with the learner's functions in place of its own (in the lesson's
namespace only, never in the library), then each `grade_<name>(ctx, mine,
reference)` of the lesson grades one. `--solution` prints the reference code.

Exit status: 0 when the lesson ran (or stopped cleanly), 1 when a step failed
(its number and title are printed), 2 for an unknown lesson or bad option,
130 when interrupted with Ctrl-C while a step runs (Ctrl-C at a pause quits like q, status 0).
"""
import argparse
import ast
import importlib.util
import inspect
import os
import sys
import textwrap
import time
import traceback
from pathlib import Path

import nn  # noqa: F401  (before NumPy: it sets OPENBLAS_THREAD_TIMEOUT, see nn/__init__.py)
import numpy

ROOT = Path(__file__).resolve().parent
LESSONS_DIR = ROOT / "lessons"
OUTPUT_DIR = ROOT / "outputs" / "lessons"
RULE = "-" * 72


class CheckFailed(AssertionError):
    """A lesson's own check did not hold."""


class StopLesson(Exception):
    """A lesson ends early on purpose (e.g. its data is missing); not a failure."""


class Context:
    """The object every step receives; steps share state through its attributes."""

    def __init__(self, quick=False, backend="numpy", data=None, out_dir=OUTPUT_DIR, features=None):
        self.quick = quick
        self.backend = backend
        self.data = data
        self.features = features
        self.out_dir = Path(out_dir)

    def check(self, condition, message="check failed"):
        """Fail the lesson with `message` unless `condition` is true."""
        if not condition:
            raise CheckFailed(message)

    def output_path(self, filename):
        """Path of an output file (PNG, ...) under the outputs folder, created on demand."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        return self.out_dir / filename

    def rng(self, seed):
        """A seeded generator whose draws are NumPy's, returned on the lesson's backend (BackendRandom)."""
        return BackendRandom(seed)

    def show_source(self, function):
        """Print the source of a function (or class) with its file:line: the plain code behind a call.

        Lessons call library functions whose code is not in the step; this
        shows it where the learner reads the step's output.
        """
        function = inspect.unwrap(function)
        try:
            lines, first = inspect.getsourcelines(function)
            path = Path(inspect.getsourcefile(function)).resolve()
        except (OSError, TypeError):
            print(f"(no Python source for {getattr(function, '__qualname__', function)})")
            return
        shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
        print(f"--- source of {function.__qualname__}, {shown}:{first}")
        print(textwrap.indent(textwrap.dedent("".join(lines)).rstrip(), "  | ", lambda line: True))

    def stop(self, message):
        """End the lesson here without failing it."""
        raise StopLesson(message)

    def fit(self, trainer):
        """`trainer.fit()` (a captioning.training.Trainer); returns its history. Ctrl-C ends the lesson.

        On Ctrl-C the Trainer finishes the step, saves last.npz and returns
        normally (`trainer.interrupted` says so); a lesson that called
        `trainer.fit()` would go on with a half-trained model. Here the
        interrupt goes on to the runner (exit 130), and the Trainer's
        "resume with --resume" advice is left out: lessons have no --resume
        (run the lesson again to start over).
        """
        trainer.resume_hint = None
        history = trainer.fit()
        if trainer.interrupted:
            raise KeyboardInterrupt
        return history


class BackendRandom:
    """A seeded random generator for lessons: NumPy draws the numbers, the arrays come back on the backend.

    `ctx.rng(seed).standard_normal((2, 3))` is NumPy's
    `default_rng(seed).standard_normal((2, 3))` moved to the current backend
    (`backend.asarray`). CuPy's own generator gives other numbers for the
    same seed; drawing with NumPy makes a lesson print the same numbers on
    NumPy and CuPy (up to the rounding of the GPU's arithmetic).
    """

    def __init__(self, seed):
        self.numpy_generator = numpy.random.default_rng(seed)

    def __getattr__(self, method):
        draw = getattr(self.numpy_generator, method)

        def on_backend(*args, **kwargs):
            from nn import backend
            value = draw(*args, **kwargs)
            return backend.asarray(value) if isinstance(value, numpy.ndarray) else value
        return on_backend


# ----------------------------------------------------------------- finding lessons

def lesson_files(lessons_dir):
    """{number: path} of the lesson files `lesson_NN_*.py` in a folder."""
    found = {}
    for path in sorted(Path(lessons_dir).glob("lesson_*.py")):
        number = path.stem.split("_")[1]
        if number.isdigit():
            found[int(number)] = path
    return found


def lesson_info(path):
    """(TITLE, SECONDS, QUICK_SECONDS) of a lesson file, read without importing it."""
    info = {"TITLE": path.stem, "SECONDS": None, "QUICK_SECONDS": None}
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError) as exc:
        return f"{path.name}: cannot be read ({type(exc).__name__}, line {getattr(exc, 'lineno', '?')})", None, None
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
            if isinstance(target, ast.Name) and target.id in info:
                try:
                    info[target.id] = ast.literal_eval(node.value)
                except ValueError:
                    pass
    for key in ("SECONDS", "QUICK_SECONDS"):   # a number, or nothing shown
        if not isinstance(info[key], (int, float)) or isinstance(info[key], bool):
            info[key] = None
    return str(info["TITLE"]), info["SECONDS"], info["QUICK_SECONDS"]


def rough_time(seconds):
    if seconds is None:
        return ""
    return f"~{seconds} s" if seconds < 120 else f"~{round(seconds / 60)} min"


def print_list(lessons_dir, file=None):
    file = file or sys.stdout
    print("Lessons (python run_lesson.py N), with rough running times (--no-pause; --quick):", file=file)
    for number, path in lesson_files(lessons_dir).items():
        title, seconds, quick = lesson_info(path)
        times = rough_time(seconds) + (f"; {rough_time(quick)}" if quick is not None else "")
        print(f"  {number:2d}  {title}  [{times}]", file=file)


def load_lesson(path):
    """Import a lesson file as a module (a fresh module object every time)."""
    name = f"_lesson_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def lesson_steps(module):
    """The lesson's step functions: its STEPS list, else step_* functions in file order."""
    if hasattr(module, "STEPS"):
        return list(module.STEPS)
    steps = [f for name, f in vars(module).items()
             if name.startswith("step_") and inspect.isfunction(f) and f.__module__ == module.__name__]
    return sorted(steps, key=lambda f: f.__code__.co_firstlineno)


# ------------------------------------------------------------------ showing a step

def step_text(step):
    """(title, explanation) from the step's docstring."""
    doc = inspect.getdoc(step) or step.__name__
    title, _, explanation = doc.partition("\n")
    return title.strip(), explanation.strip("\n").rstrip()


def step_body(step):
    """The source of the step function without its `def` line and docstring."""
    source = textwrap.dedent(inspect.getsource(step))
    function = ast.parse(source).body[0]
    body = function.body
    if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
            and isinstance(body[0].value.value, str):
        body = body[1:]
    if not body:
        return ""
    lines = source.splitlines()
    return textwrap.dedent("\n".join(lines[body[0].lineno - 1:function.end_lineno])).rstrip()


def format_value(value):
    """One value for the results list; arrays are printed by NumPy's own rules."""
    if isinstance(value, float):
        return f"{value:.6g}"
    if type(value).__module__.split(".")[0] in ("numpy", "cupy") and getattr(value, "ndim", 0) > 0:
        array = numpy.asarray(value.get() if hasattr(value, "get") else value)
        text = numpy.array2string(array, precision=4, max_line_width=100)
    else:
        text = str(value)
    return text if "\n" not in text else "\n" + textwrap.indent(text, "      ")


def show_results(results):
    if isinstance(results, dict) and results:
        print("results:")
        width = max(len(str(k)) for k in results)
        for key, value in results.items():
            print(f"  {str(key):<{width}} = {format_value(value)}")


def ask(prompt):
    """The learner's answer at a pause: 'next', 'all' or 'quit'."""
    try:
        answer = input(prompt).strip().lower()
    except EOFError:
        return "all"
    except KeyboardInterrupt:
        print()
        return "quit"
    if answer.startswith("q"):
        return "quit"
    if answer.startswith("a"):
        return "all"
    return "next"


# ------------------------------------------------------------------ running

def run(path, ctx, pause, patch=None):
    """Run one lesson file step by step; returns the exit status.

    patch: None, or a function called with the loaded lesson module before
    its steps run (--exercise puts the learner's functions in it).
    """
    title = lesson_info(path)[0]
    print(f"{'=' * 72}\n{title}\n{'=' * 72}")
    started = time.perf_counter()
    try:
        module = load_lesson(path)
    except Exception:
        traceback.print_exc()
        print(f"\nFAILED: lesson {path.name} could not be loaded", file=sys.stderr)
        return 1
    if patch is not None:
        patch(module)
    if module.__doc__:
        print(inspect.cleandoc(module.__doc__) + "\n")
    steps = lesson_steps(module)
    for index, step in enumerate(steps, 1):
        step_title, explanation = step_text(step)
        print(f"{RULE}\nStep {index}/{len(steps)}: {step_title}\n{RULE}")
        if explanation:
            print(explanation + "\n")
        print(">>> code")
        print(textwrap.indent(step_body(step), "    "))
        print("<<< output")
        try:
            results = step(ctx) if inspect.signature(step).parameters else step()
        except StopLesson as stop:
            print(f"\n{stop}\nLesson stopped at step {index} ({step_title}).")
            return 0
        except KeyboardInterrupt:
            print(f"\nInterrupted at step {index} ({step_title}).", file=sys.stderr)
            return 130
        except Exception as exc:
            if not isinstance(exc, (AssertionError, NotImplementedError)):   # those explain themselves
                traceback.print_exc()
            print(f"\nFAILED at step {index} ({step.__name__}: {step_title}): "
                  f"{type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
        show_results(results)
        if pause and index < len(steps):
            answer = ask("\n[Enter] next step, [a] run the rest, [q] quit: ")
            if answer == "quit":
                print(f"Stopped after step {index} of {len(steps)}.")
                return 0
            pause = answer != "all"
        print()
    print(f"{RULE}\nLesson done: {len(steps)} steps in {time.perf_counter() - started:.1f} s.")
    return 0


# ------------------------------------------------------------------ exercises

def exercise_path(lesson_path, exercise_dir):
    """The learner's own file for a lesson's exercises: exercises/lesson_NN_name.py."""
    return Path(exercise_dir) / lesson_path.name


def stub_source(module, lesson_number):
    """The text of a fresh exercise file: each exercise's signature and docstring, and no body."""
    header = (f'"""Exercises of lesson {lesson_number}: write the body of each function below.\n\n'
              f"Grade them:          python run_lesson.py {lesson_number} --exercise\n"
              f"See the reference:   python run_lesson.py {lesson_number} --solution\n"
              "This file is yours: the runner never overwrites it (delete it to start over).\n"
              '"""\n')
    parts = [header + "\n".join(getattr(module, "EXERCISE_IMPORTS", [])) + "\n"]
    for name in module.EXERCISES:
        reference = getattr(module, name)
        doc = textwrap.indent('"""' + (inspect.getdoc(reference) or name) + '\n"""', "    ")
        parts.append(f"\ndef {name}{inspect.signature(reference)}:\n{doc}\n"
                     f"    raise NotImplementedError(\"write {name}\")\n")
    return "\n".join(parts)


def load_exercise_file(path):
    """Import the learner's exercise file (a fresh module each time)."""
    spec = importlib.util.spec_from_file_location(f"_exercises_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def grade(module, ctx, mine):
    """Run the lesson's grade_<name>(ctx, mine, reference) for every exercise; returns {name: (ok, message)}."""
    results = {}
    for name in module.EXERCISES:
        grader = getattr(module, f"grade_{name}")
        try:
            results[name] = (True, grader(ctx, mine, getattr(module, name)) or "passed")
        except NotImplementedError as exc:
            results[name] = (False, f"not written yet ({exc})")
        except Exception as exc:  # the learner's code may fail in any way
            results[name] = (False, f"{type(exc).__name__}: {exc}")
    return results


def run_exercises(path, ctx, exercise_dir, number):
    """--exercise: make or read the learner's file, run the lesson with their functions, grade them."""
    module = load_lesson(path)
    if not getattr(module, "EXERCISES", None):
        print(f"error: lesson {number} has no exercises (lessons with exercises: {exercise_lessons(path.parent)})",
              file=sys.stderr)
        return 2
    mine_path = exercise_path(path, exercise_dir)
    if not mine_path.exists():
        mine_path.parent.mkdir(parents=True, exist_ok=True)
        ignore = mine_path.parent / ".gitignore"
        if not ignore.exists():
            ignore.write_text("# the learner's own exercise files\n*\n")
        mine_path.write_text(stub_source(module, number), encoding="utf-8")
        print(f"Wrote {mine_path}: write the bodies of {', '.join(module.EXERCISES)} there, then run "
              f"`python run_lesson.py {number} --exercise` again.\n")
    try:
        mine = load_exercise_file(mine_path)
        missing = [name for name in module.EXERCISES if not callable(getattr(mine, name, None))]
        if missing:
            raise AttributeError(f"it has no function {', '.join(missing)}")
    except Exception as exc:
        traceback.print_exc()
        print(f"\nFAILED: your exercise file {mine_path} cannot be used: {type(exc).__name__}: {exc}",
              file=sys.stderr)
        return 1

    def use_mine(lesson_module):
        for name in module.EXERCISES:          # only in the lesson's namespace, never in the library
            setattr(lesson_module, name, getattr(mine, name))
    status = run(path, ctx, pause=False, patch=use_mine)
    if status == 130:
        return status
    results = grade(module, ctx, mine)
    print(f"{RULE}\nExercises of lesson {number} ({mine_path}):")
    print(f"  the lesson's own checks with your functions: {'passed' if status == 0 else 'FAILED (see above)'}")
    for name, (ok, message) in results.items():
        print(f"  {name}: {'PASS' if ok else 'FAIL'} - {message}")
    return 0 if status == 0 and all(ok for ok, _ in results.values()) else 1


def show_solution(path, number):
    """--solution: the reference source of each exercise of a lesson."""
    module = load_lesson(path)
    if not getattr(module, "EXERCISES", None):
        print(f"error: lesson {number} has no exercises (lessons with exercises: {exercise_lessons(path.parent)})",
              file=sys.stderr)
        return 2
    for name in module.EXERCISES:
        reference = getattr(module, name)
        print(f"# {name}, from {inspect.getsourcefile(reference)}\n{textwrap.dedent(inspect.getsource(reference))}")
    return 0


def exercise_lessons(lessons_dir):
    """Numbers of the lessons that declare EXERCISES (read without importing them)."""
    found = []
    for number, path in lesson_files(lessons_dir).items():
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        if any(isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "EXERCISES" for t in node.targets)
               for node in tree.body):
            found.append(number)
    return ", ".join(map(str, found)) or "none"


def data_folder(given):
    """The Flickr8k folder: --data, else $FLICKR8K_DIR, else ../shared/flickr8k when it exists, else None."""
    if given:
        return Path(given)
    if os.environ.get("FLICKR8K_DIR"):
        return Path(os.environ["FLICKR8K_DIR"])
    default = ROOT.parent / "shared" / "flickr8k"
    return default if default.is_dir() else None


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python run_lesson.py",
        description="Step through a lesson: explanation, code, output; Enter continues, a runs the rest, q quits.")
    parser.add_argument("lesson", nargs="?", help="lesson number (see --list) or path of a lesson file")
    parser.add_argument("--list", action="store_true", help="list the lessons with titles and rough running times")
    parser.add_argument("--no-pause", action="store_true",
                        help="run straight through (automatic when stdin is not a terminal)")
    parser.add_argument("--quick", action="store_true", help="train less in lessons that train something")
    parser.add_argument("--backend", choices=["numpy", "cupy"], default=None,
                        help="array backend (default $NN_BACKEND or numpy)")
    parser.add_argument("--data", default=None, help="Flickr8k folder for the lessons that use it "
                        "(default $FLICKR8K_DIR, else ../shared/flickr8k)")
    parser.add_argument("--features", default=None,
                        help="a Flickr8k feature cache made by `python -m captioning features` (its --out) "
                        "for lesson 13 to read instead of encoding the photos itself")
    parser.add_argument("--out", default=str(OUTPUT_DIR), help="folder for what lessons write: pictures, "
                        "training runs, lesson 13's feature cache (default %(default)s)")
    parser.add_argument("--exercise", action="store_true",
                        help="write the lesson's exercises yourself: makes exercises/lesson_NN_*.py (your "
                        "file), runs the lesson with your functions and grades them")
    parser.add_argument("--solution", action="store_true", help="show the reference code of the lesson's exercises")
    parser.add_argument("--exercise-dir", default=str(ROOT / "exercises"),
                        help="folder of your exercise files (default %(default)s)")
    parser.add_argument("--lessons-dir", default=os.environ.get("LESSONS_DIR", str(LESSONS_DIR)),
                        help="folder holding lesson_NN_*.py files (default $LESSONS_DIR or ./lessons)")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    lessons_dir = Path(args.lessons_dir)
    if not lessons_dir.is_dir():
        print(f"error: lessons folder {lessons_dir} does not exist (--lessons-dir / $LESSONS_DIR)", file=sys.stderr)
        return 2
    if args.list or args.lesson is None:
        print_list(lessons_dir)
        return 0 if args.list else 2
    if args.lesson.isdigit():
        path = lesson_files(lessons_dir).get(int(args.lesson))
        if path is None:
            print(f"error: there is no lesson {args.lesson}", file=sys.stderr)
            print_list(lessons_dir)
            return 2
    else:
        path = Path(args.lesson)
        if not path.is_file() or path.suffix != ".py":
            print(f"error: no lesson file {path} (a lesson number, or a lesson_NN_*.py file)", file=sys.stderr)
            print_list(lessons_dir)
            return 2
    if Path(args.out).exists() and not Path(args.out).is_dir():
        print(f"error: --out {args.out} is a file; give a folder for the lesson's pictures and runs",
              file=sys.stderr)
        return 2
    from nn import backend
    from captioning.cli import UsageError, check_outputs
    data = data_folder(args.data)
    try:
        # lessons write pictures, runs and caches under --out: never into the data folder, which is only read
        check_outputs([("--out", args.out), ("--exercise-dir", args.exercise_dir)], data_folder=data)
        if args.backend:
            backend.use(args.backend)
        backend.name()  # reads $NN_BACKEND when no flag was given
    except (backend.BackendError, UsageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    ctx = Context(quick=args.quick, backend=backend.name(), data=data, out_dir=args.out, features=args.features)
    if args.solution:
        return show_solution(path, args.lesson)
    if args.exercise:
        return run_exercises(path, ctx, args.exercise_dir, args.lesson)
    pause = not args.no_pause and sys.stdin is not None and sys.stdin.isatty()
    return run(path, ctx, pause)


if __name__ == "__main__":
    sys.exit(main())
