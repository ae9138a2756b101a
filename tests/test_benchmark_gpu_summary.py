"""benchmarks/gpu_summary.py turns a gpu_check.sh folder into issue 17's targets table."""
import json

import pytest

from conftest import load_benchmark


@pytest.fixture(scope="module")
def gpu_summary():
    return load_benchmark("gpu_summary")


def _row(name, ms, torch_ms=None, **extra):
    return {"name": name, "ms": ms, "torch_ms": torch_ms, "ratio": ms / torch_ms if torch_ms else None, **extra}


def test_the_h200_run_of_the_issue_reads_as_met_and_not_met(gpu_summary, tmp_path):
    """The numbers issue 17 reports for an H200: the suite failed, most ratios miss their targets."""
    (tmp_path / "device.txt").write_text("NVIDIA H200, 143771 MiB, 580.00\n")
    (tmp_path / "tests.txt").write_text("....F\nFAILED tests/test_nn_conv.py::x\n5 failed, 900 passed in 100.0s\n")
    (tmp_path / "kernels_tests.txt").write_text("12 passed in 3.1s\n")
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
    assert verdicts["the GPU kernels' tests (NN_GPU_KERNELS paths)"] == "met"
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
    # everything skipped (no GPU) is a summary with no failures; the project's skip reasons are not one
    assert gpu_summary.pytest_line("47 skipped: CuPy is not installed\n47 skipped in 0.52s\n") == (
        "47 skipped in 0.52s", True)
    assert gpu_summary.pytest_line("3 skipped: CuPy is not installed\n")[1] is False


def test_lessons_that_never_finished_count_as_failed(gpu_summary, tmp_path):
    (tmp_path / "lessons.txt").write_text("lesson 1 on cupy: exit 0 in 3 s\nlesson 2 on cupy: exit 0 in 3 s\n")
    text = gpu_summary.summary(str(tmp_path))
    line = next(line for line in text.splitlines() if line.startswith("| every lesson on CuPy"))
    assert "did not finish" in line and line.endswith("| **not met** |")
