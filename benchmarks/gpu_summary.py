"""The summary of a `benchmarks/gpu_check.sh` run: issue 17's targets, met or not, from the files it wrote.

    python benchmarks/gpu_summary.py OUT_FOLDER        (writes OUT_FOLDER/summary.md and prints it)

Reads what gpu_check.sh leaves in OUT_FOLDER (each file is optional: a stage
that did not run shows as "not run"):
- device.txt: nvidia-smi's GPU name and the Python/CuPy versions;
- missing.txt: what the checks needed and did not find (no wheels, no Flickr8k subset, no GPU);
- tests_1.txt ... (or tests.txt): the suite's pytest output, one file per process;
- lessons.txt: `lesson N on cupy: exit E in S s` lines; lesson_N.txt: each lesson's output;
- train.txt: the features + short training on the Flickr8k subset;
- bench_gpu.json, bench_gpu_kernels.json: `benchmarks/run.py --json` (rows with ms, torch_ms, ratio);
- epoch_gpu.json, epoch_gpu_device.json: `benchmarks/epoch_time.py --json`;
- timings.txt: `name seconds` lines of the stages.
"""
import glob
import json
import os
import re
import sys

# (row name prefix in run.py, the largest ours/torch allowed) -- issue 17's targets
RATIO_TARGETS = [("conv 3x3", 1.5), ("depthwise", 2.0), ("EfficientNet-Lite0 forward", 1.7),
                 ("LSTM fwd+bwd", 1.3), ("attention decoder train step", 1.2)]
EFFICIENTNET_IMAGES_PER_S = 6000
BEAM_IMAGES_PER_S = 15000
BEAM_SHARE_IN_MODEL = 0.60
EPOCH_SECONDS = 15.0


def _read(folder, name):
    path = os.path.join(folder, name)
    if not os.path.exists(path):
        return None
    with open(path, errors="replace") as f:
        return f.read()


def _json(folder, name):
    text = _read(folder, name)
    try:
        return json.loads(text) if text else None
    except json.JSONDecodeError:
        return None


def _images_per_s(row):
    match = re.match(r"(\d+) img/s", row.get("throughput", ""))
    return int(match.group(1)) if match else None


def _verdict(ok):
    """ok None: the stage did not run."""
    return "-" if ok is None else "met" if ok else "**not met**"


# The project's skip reason when CuPy or the GPU is missing (tests/conftest.py): a suite that
# skipped its CuPy half has not checked the GPU, whatever its last line says.
NO_CUPY_SKIP = "CuPy is not installed or no GPU is visible"


def pytest_line(text):
    """The '... passed, ... failed ... in ...' line of a pytest run, and whether it had no failures
    (False too when it skipped tests for want of CuPy or a GPU)."""
    if text is None:
        return "not run", None
    # pytest's last line ("3 passed, 1 skipped in 2.0s"; the project's skip reasons also say "N skipped")
    lines = [line for line in text.splitlines()
             if re.search(r"\d+ (passed|failed|errors?|skipped|deselected)\b.* in [\d.]+s", line)]
    if not lines:
        return "no pytest summary (crashed or timed out?): " + (text.strip().splitlines() or ["(empty)"])[-1][-60:], False
    last = lines[-1].strip("= ")
    skipped_cupy = re.search(r"(\d+) skipped: " + re.escape(NO_CUPY_SKIP), text)
    if skipped_cupy:
        return f"{last} ({skipped_cupy.group(1)} skipped: {NO_CUPY_SKIP})", False
    return last, not re.search(r"\d+ (failed|errors?)\b", last)


def _suite_files(folder):
    """The suite's output files: one per process (tests_1.txt, ...), else the one tests.txt; [] if none."""
    names = sorted(os.path.basename(p) for p in glob.glob(os.path.join(folder, "tests_*.txt")))
    return names or [name for name in ["tests.txt"] if os.path.exists(os.path.join(folder, name))]


def suite_result(folder):
    """(text, ok) for the whole suite over its output files; ("not run", None) without any."""
    names = _suite_files(folder)
    if names == ["tests.txt"] or not names:
        return pytest_line(_read(folder, "tests.txt"))
    parts = [(name, *pytest_line(_read(folder, name))) for name in names]
    text = "; ".join(f"{name[:-4]}: {line}" for name, line, _ in parts)
    return text, all(ok for _, _, ok in parts)


def kernel_failures(folder):
    """FAILED/ERROR lines of the suite from the GPU kernels' test files (tests/test_nn_*cuda*.py),
    or None when the suite did not run."""
    texts = [_read(folder, name) for name in _suite_files(folder)]
    if not texts:
        return None
    return [line for t in texts for line in t.splitlines()
            if re.match(r"(FAILED|ERROR) tests/test_nn_\w*cuda\w*\.py", line)]


def lessons_stopped_early(folder):
    """'N (stopped at step S)' for each lesson whose output says it stopped before its end (a
    lesson stops, with exit 0, when its data or weights are missing)."""
    stopped = []
    for path in sorted(glob.glob(os.path.join(folder, "lesson_*.txt"))):
        match = re.search(r"Lesson stopped at step (\d+)", _read(folder, os.path.basename(path)) or "")
        number = re.match(r"lesson_(\d+)\.txt", os.path.basename(path))
        if match and number:
            stopped.append(f"{number.group(1)} (stopped at step {match.group(1)})")
    return sorted(stopped, key=lambda s: int(s.split()[0]))


def stage_exits(folder):
    """{stage name: exit status} from timings.txt's 'name seconds exit=E' lines."""
    return {m.group(1): int(m.group(2))
            for m in re.finditer(r"^(\S+) \d+ exit=(\d+)", _read(folder, "timings.txt") or "", re.M)}


def train_row(folder):
    exits = stage_exits(folder)
    if "features" not in exits:
        return "| features and one training epoch on the Flickr8k subset (--features-on-device) | not run | - |"
    lines = [line.strip() for line in (_read(folder, "train.txt") or "").splitlines() if line.strip()]
    measured = f"features exit {exits['features']}, train exit {exits.get('train', 'not run')}"
    if lines:
        measured += f"; last line: {lines[-1].replace('|', '/')[:160]}"
    ok = exits["features"] == 0 and exits.get("train") == 0
    return f"| features and one training epoch on the Flickr8k subset (--features-on-device) | {measured} | {_verdict(ok)} |"


def lesson_lines(text):
    """(lessons run, lessons failed as 'N (exit E)')."""
    if text is None:
        return 0, []
    runs = re.findall(r"lesson (\d+) on cupy: exit (\d+)", text)
    return len(runs), [f"{n} (exit {code})" for n, code in runs if code != "0"]


def target_rows(bench, kernels_bench):
    """Markdown rows: target, measured, verdict, for each row of run.py's JSON that has a target."""
    rows = []
    if bench is None:
        return ["| every run.py benchmark | not run | - |"]
    by_kernels = {r["name"]: r for r in (kernels_bench or {}).get("rows", [])}
    for row in bench["rows"]:
        name = row["name"]
        limit = next((limit for prefix, limit in RATIO_TARGETS if name.startswith(prefix)), None)
        if limit is not None:
            ratio = row.get("ratio")
            measured = (f"{row['ms']:.2f} ms / torch {row['torch_ms']:.2f} ms = {ratio:.2f}x" if ratio
                        else f"{row['ms']:.2f} ms (no torch)")
            with_kernels = by_kernels.get(name)
            if with_kernels and with_kernels.get("ratio"):
                measured += f"; NN_GPU_KERNELS=1: {with_kernels['ms']:.2f} ms = {with_kernels['ratio']:.2f}x"
            best = min(r for r in (ratio, (with_kernels or {}).get("ratio")) if r) if ratio else None
            rows.append(f"| {name}: ours/torch <= {limit} | {measured} | {_verdict(best is not None and best <= limit)} |")
        if name.startswith("EfficientNet-Lite0 forward"):
            rate = _images_per_s(row)
            kernel_rate = _images_per_s(by_kernels.get(name, {}))
            best = max(r for r in (rate, kernel_rate, 0) if r is not None)
            rows.append(f"| {name}: >= {EFFICIENTNET_IMAGES_PER_S} img/s | {rate} img/s"
                        + (f"; NN_GPU_KERNELS=1: {kernel_rate} img/s" if kernel_rate else "")
                        + f" | {_verdict(best >= EFFICIENTNET_IMAGES_PER_S)} |")
        if name.startswith("beam search"):
            rate, share = _images_per_s(row), row.get("decode_step_share")
            rows.append(f"| {name}: >= {BEAM_IMAGES_PER_S} img/s | {rate} img/s | "
                        f"{_verdict(rate is not None and rate >= BEAM_IMAGES_PER_S)} |")
            if share is not None:
                rows.append(f"| {name}: >= {BEAM_SHARE_IN_MODEL:.0%} of the time in decode_step | {share:.0%} | "
                            f"{_verdict(share >= BEAM_SHARE_IN_MODEL)} |")
    return rows


def epoch_row(label, result):
    if result is None:
        return f"| Flickr8k-sized epoch ({label}) <= {EPOCH_SECONDS:.0f} s | not run | - |"
    parts = ", ".join(f"{k} {v:.1f}" for k, v in result["parts_s"].items())
    return (f"| Flickr8k-sized epoch ({label}) <= {EPOCH_SECONDS:.0f} s | {result['epoch_estimate_s']:.1f} s "
            f"({result['steps']} of {result['steps_per_epoch']} steps run, {result['step_ms']:.1f} ms a step; "
            f"{parts} s) | {_verdict(result['epoch_estimate_s'] <= EPOCH_SECONDS)} |")


def summary(folder):
    device = (_read(folder, "device.txt") or "device: not recorded\n").strip()
    missing = [line.strip() for line in (_read(folder, "missing.txt") or "").splitlines() if line.strip()]
    tests, tests_ok = suite_result(folder)
    failures = kernel_failures(folder)
    # The kernels' tests passed only if every part of the suite ran to its end on CuPy.
    suite_finished = "no pytest summary" not in tests and f"skipped: {NO_CUPY_SKIP})" not in tests
    if failures is None:
        kernels = "not run"
    elif failures:
        kernels = f"{len(failures)} failed: " + ", ".join(f.split()[1] for f in failures[:5])
    else:
        kernels = "no failures among the suite's results (see the suite's row)"
    lessons_run, lessons_failed = lesson_lines(_read(folder, "lessons.txt"))
    lessons_failed += lessons_stopped_early(folder)
    lessons_total = len(glob.glob(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lessons",
                                               "lesson_*.py")))
    if lessons_run and lessons_run < lessons_total:       # the others timed out before they started or ended
        lessons_failed.append(f"{lessons_total - lessons_run} of {lessons_total} did not finish")
    lines = ["# gpu_check.sh summary", "", "```", device, "```", ""]
    if missing:
        lines += ["**Missing, so some checks could not run:**", ""] + [f"- {m}" for m in missing] + [""]
    lines += ["| target (issue 17) | measured | verdict |", "|---|---|---|",
              f"| the suite on NumPy and CuPy: 0 failures | {tests} | {_verdict(tests_ok)} |",
              f"| the GPU kernels' tests (NN_GPU_KERNELS paths, in the suite) | {kernels} | "
              f"{_verdict(None if failures is None else not failures and suite_finished)} |",
              f"| every lesson on CuPy | {lessons_run} run, failed: {', '.join(lessons_failed) or 'none'} | "
              f"{_verdict(not lessons_failed if lessons_run else None)} |",
              train_row(folder)]
    lines += target_rows(_json(folder, "bench_gpu.json"), _json(folder, "bench_gpu_kernels.json"))
    lines.append(epoch_row("host features", _json(folder, "epoch_gpu.json")))
    lines.append(epoch_row("--features-on-device", _json(folder, "epoch_gpu_device.json")))
    timings = _read(folder, "timings.txt")
    if timings:
        lines += ["", "Stage times (s): " + ", ".join(" ".join(t.split()) for t in timings.strip().splitlines())]
    return "\n".join(lines) + "\n"


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or not os.path.isdir(argv[0]):
        sys.exit("usage: python benchmarks/gpu_summary.py OUT_FOLDER (the folder gpu_check.sh wrote)")
    text = summary(argv[0])
    with open(os.path.join(argv[0], "summary.md"), "w") as f:
        f.write(text)
    print(text, end="")


if __name__ == "__main__":
    main()
