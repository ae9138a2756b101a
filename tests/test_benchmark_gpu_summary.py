"""benchmarks/gpu_summary.py turns a gpu_check.sh folder into issue 17's targets table."""
import json

import pytest

from conftest import load_benchmark


@pytest.fixture(scope="module")
def gpu_summary():
    return load_benchmark("gpu_summary")


def _verdicts(gpu_summary, folder):
    """{target: verdict} of the summary of `folder`."""
    return {line.split("|")[1].strip(): line.split("|")[3].strip()
            for line in gpu_summary.summary(str(folder)).splitlines()
            if line.startswith("| ") and not line.startswith("| target")}


def _row(name, ms, torch_ms=None, **extra):
    return {"name": name, "ms": ms, "torch_ms": torch_ms, "ratio": ms / torch_ms if torch_ms else None, **extra}


def test_the_h200_run_of_the_issue_reads_as_met_and_not_met(gpu_summary, tmp_path):
    """The numbers issue 17 reports for an H200: the suite failed, most ratios miss their targets."""
    (tmp_path / "device.txt").write_text("NVIDIA H200, 143771 MiB, 580.00\n")
    (tmp_path / "tests.txt").write_text("....F\nFAILED tests/test_nn_conv.py::x\n5 failed, 900 passed in 100.0s\n")
    (tmp_path / "lessons.txt").write_text("lesson 1 on cupy: exit 0 in 3 s\nlesson 9 on cupy: exit 1 in 5 s\n")
    rows = [_row("conv 3x3 64->64 fwd+bwd", 2.9, 1.2), _row("depthwise 3x3 s2 fwd+bwd", 1.86, 0.6),
            _row("EfficientNet-Lite0 forward, batch 128", 62.0, 13.1, throughput="2063 img/s (torch 9763)"),
            _row("LSTM fwd+bwd", 3.8, 2.1), _row("attention decoder train step", 47.5, 31.6),
            _row("beam search, beam 3, 1000 images", 163.6, throughput="6114 img/s", decode_step_share=0.25)]
    (tmp_path / "bench_gpu.json").write_text(json.dumps({"rows": rows}))
    kernel_rows = [_row("depthwise 3x3 s2 fwd+bwd", 1.0, 0.6),
                   _row("EfficientNet-Lite0 forward, batch 128", 20.0, 13.1, throughput="6400 img/s (torch 9763)")]
    (tmp_path / "bench_gpu_kernels.json").write_text(json.dumps({"rows": kernel_rows}))
    epoch = {"steps": 469, "steps_per_epoch": 469, "step_ms": 50.0, "epoch_estimate_s": 30.2,
             "parts_s": {"gather": 1.0, "model": 20.0}}
    (tmp_path / "epoch_gpu.json").write_text(json.dumps(epoch))
    gpu_summary.main([str(tmp_path)])
    text = (tmp_path / "summary.md").read_text()
    verdicts = {line.split("|")[1].strip(): line.split("|")[3].strip() for line in text.splitlines()
                if line.startswith("| ") and not line.startswith("| target")}
    assert verdicts["the suite on NumPy and CuPy: 0 failures"] == "**not met**"
    assert verdicts["the GPU kernels' tests (NN_GPU_KERNELS paths, in the suite)"] == "met"   # the conv failed
    assert verdicts["every lesson on CuPy"] == "**not met**"
    assert verdicts["conv 3x3 64->64 fwd+bwd: ours/torch <= 1.5"] == "**not met**"          # 2.42x
    assert verdicts["depthwise 3x3 s2 fwd+bwd: ours/torch <= 2.0"] == "met"                 # 1.67x with the kernels
    assert verdicts["EfficientNet-Lite0 forward, batch 128: >= 6000 img/s"] == "met"        # 6400 with the kernels
    assert verdicts["EfficientNet-Lite0 forward, batch 128: ours/torch <= 1.7"] == "met"
    assert verdicts["LSTM fwd+bwd: ours/torch <= 1.3"] == "**not met**"
    assert verdicts["beam search, beam 3, 1000 images: >= 15000 img/s"] == "**not met**"
    assert verdicts["beam search, beam 3, 1000 images: >= 60% of the time in decode_step"] == "**not met**"
    assert verdicts["Flickr8k-sized epoch (host features) <= 15 s"] == "**not met**"
    assert verdicts["Flickr8k-sized epoch (--features-on-device) <= 15 s"] == "-"          # not run
    assert "NVIDIA H200" in text and "5 failed, 900 passed" in text


def test_an_empty_folder_says_what_did_not_run(gpu_summary, tmp_path):
    text = gpu_summary.summary(str(tmp_path))
    assert "| the suite on NumPy and CuPy: 0 failures | not run | - |" in text
    assert "| every lesson on CuPy | 0 run, failed: none | - |" in text
    assert "| every run.py benchmark | not run | - |" in text
    assert gpu_summary.pytest_line("collected 3 items\nKilled\n") == (
        "no pytest summary (crashed or timed out?): Killed", False)
    assert "| features and one training epoch on the Flickr8k subset (--features-on-device) | not run | - |" in text
    # the project's skip reasons are not pytest's summary line
    assert gpu_summary.pytest_line("3 skipped: CuPy is not installed or no GPU is visible\n")[1] is False


def test_a_suite_that_skipped_its_cupy_half_has_not_met_anything(gpu_summary, tmp_path):
    """Without CuPy or a GPU the suite passes with its CuPy tests skipped: that checks nothing on the GPU."""
    skipped = "11 skipped: CuPy is not installed or no GPU is visible\n3 passed, 11 skipped in 0.52s\n"
    assert gpu_summary.pytest_line(skipped) == (
        "3 passed, 11 skipped in 0.52s (11 skipped: CuPy is not installed or no GPU is visible)", False)
    assert gpu_summary.pytest_line("1 skipped: optional oracle: PyTorch not installed\n3 passed, 1 skipped in 1s\n")[1]
    (tmp_path / "tests_1.txt").write_text("5 passed in 1.0s\n")
    (tmp_path / "tests_2.txt").write_text(skipped)
    verdicts = _verdicts(gpu_summary, tmp_path)
    assert verdicts["the suite on NumPy and CuPy: 0 failures"] == "**not met**"
    assert verdicts["the GPU kernels' tests (NN_GPU_KERNELS paths, in the suite)"] == "**not met**"


def test_the_suite_in_several_processes_reads_as_one(gpu_summary, tmp_path):
    for part, last in enumerate(["300 passed in 90.0s", "280 passed, 2 deselected in 95.0s",
                                 "1 failed, 310 passed in 99.0s"], start=1):
        failed = "FAILED tests/test_nn_depthwise_cuda.py::test_dx[cupy] - AssertionError\n" if part == 3 else ""
        (tmp_path / f"tests_{part}.txt").write_text(f"....\n{failed}{last}\n")
    text = gpu_summary.summary(str(tmp_path))
    verdicts = _verdicts(gpu_summary, tmp_path)
    assert verdicts["the suite on NumPy and CuPy: 0 failures"] == "**not met**"
    assert verdicts["the GPU kernels' tests (NN_GPU_KERNELS paths, in the suite)"] == "**not met**"
    assert "tests_2: 280 passed, 2 deselected in 95.0s" in text and "test_dx[cupy]" in text
    (tmp_path / "tests_3.txt").write_text("310 passed in 99.0s\n")
    assert set(_verdicts(gpu_summary, tmp_path).values()) == {"met", "-"}
    (tmp_path / "tests_3.txt").write_text("....\nKilled\n")                    # a process that never finished
    verdicts = _verdicts(gpu_summary, tmp_path)
    assert verdicts["the suite on NumPy and CuPy: 0 failures"] == "**not met**"
    assert verdicts["the GPU kernels' tests (NN_GPU_KERNELS paths, in the suite)"] == "**not met**"


def test_lessons_that_stopped_early_and_missing_inputs_are_not_passes(gpu_summary, tmp_path):
    """A lesson stops with exit 0 when its weights or data are missing; the summary counts it as failed
    and lists what gpu_check.sh found missing."""
    (tmp_path / "lessons.txt").write_text("".join(f"lesson {n} on cupy: exit 0 in 3 s\n" for n in range(1, 30)))
    (tmp_path / "lesson_13.txt").write_text("...\nNo Flickr8k here.\nLesson stopped at step 2 (Read the data).\n")
    (tmp_path / "lesson_1.txt").write_text("All checks passed.\n")
    (tmp_path / "missing.txt").write_text("no Flickr8k subset at .device/flickr_subset (...)\n")
    text = gpu_summary.summary(str(tmp_path))
    line = next(line for line in text.splitlines() if line.startswith("| every lesson on CuPy"))
    assert "13 (stopped at step 2)" in line and line.endswith("| **not met** |")
    assert "- no Flickr8k subset at .device/flickr_subset" in text


def test_the_short_training_row_reads_the_stage_exits(gpu_summary, tmp_path):
    (tmp_path / "timings.txt").write_text("bench 120 exit=0\nfeatures 20 exit=0\ntrain 60 exit=0\ntotal 400 s\n")
    (tmp_path / "train.txt").write_text("epoch 1 | loss 4.1 | dev BLEU-4 3.2\n")
    row = "features and one training epoch on the Flickr8k subset (--features-on-device)"
    assert _verdicts(gpu_summary, tmp_path)[row] == "met"
    assert "dev BLEU-4 3.2" in gpu_summary.summary(str(tmp_path))
    (tmp_path / "timings.txt").write_text("features 20 exit=0\ntrain 90 exit=124 (timed out at 90 s)\n")
    assert _verdicts(gpu_summary, tmp_path)[row] == "**not met**"


def test_lessons_that_never_finished_count_as_failed(gpu_summary, tmp_path):
    (tmp_path / "lessons.txt").write_text("lesson 1 on cupy: exit 0 in 3 s\nlesson 2 on cupy: exit 0 in 3 s\n")
    text = gpu_summary.summary(str(tmp_path))
    line = next(line for line in text.splitlines() if line.startswith("| every lesson on CuPy"))
    assert "did not finish" in line and line.endswith("| **not met** |")
