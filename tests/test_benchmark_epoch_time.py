"""benchmarks/epoch_time.py times a real Trainer epoch and splits it into parts that add up."""
import json

import pytest

from conftest import load_benchmark


@pytest.fixture(scope="module")
def epoch_time():
    return load_benchmark("epoch_time")


def test_a_cut_short_epoch_is_timed_part_by_part(epoch_time, tmp_path, capsys):
    out = tmp_path / "epoch.json"
    result = epoch_time.main(["--images", "40", "--dev-images", "6", "--steps", "2", "--grid", "3",
                              "--feature-dim", "8", "--vocab", "30", "--json", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert result["steps"] == 2 and result["steps_per_epoch"] == 4        # 40 images x 5 captions / 64
    parts = result["parts_s"]
    assert set(parts) == set(epoch_time.PARTS)
    # the training model and the validation both ran, and the parts stay inside the wall time
    assert parts["model"] > 0 and parts["validate"] > 0 and parts["dev_loss"] > 0 and parts["save"] > 0
    assert sum(parts.values()) <= result["wall_s"] * 1.01
    per_step = (parts["gather"] + parts["model"] + parts["update"]) / 2
    assert result["epoch_estimate_s"] == pytest.approx(
        4 * per_step + parts["validate"] + parts["dev_loss"] + parts["save"] + parts["curves"])
    printed = capsys.readouterr().out
    assert "2 of 4 steps" in printed and "dev_loss" in printed
