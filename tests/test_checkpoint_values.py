"""Damaged checkpoint values are refused when read, naming the array.

NaN/inf weights, integer parameters, missing or unexpected encoder arrays:
each used to load (casting, or with a freshly initialised CNN) and caption
garbage with exit status 0.
"""
import numpy
import pytest

from nn import layers
from nn.optim import Adam
from nn.persist import check_parameter_values, load_npz, save_npz
from captioning.checkpoint import load_checkpoint, save_checkpoint
from captioning.cli import main
from captioning.data.datasets import ShapesDataset
from captioning.data.text import Vocabulary
from captioning.models import ConfigMismatchError, build
from captioning.encoders import TrainableEncoder, make_encoder

TINY = {"wordvec_dim": 8, "hidden_dim": 8, "attention_dim": 8, "doubly_stochastic": 0.0}


def tiny_checkpoint(path, with_optimizer=True):
    """A small-CNN + attention checkpoint (as `train --shapes` writes), built in milliseconds."""
    vocabulary = Vocabulary.build([["a", "red", "square"]], min_count=1)
    encoder = TrainableEncoder.small_cnn(channels=ShapesDataset.CNN_CHANNELS, image_size=ShapesDataset.IMAGE_SIZE,
                                         seed=1)
    model = build({"model": "attention", "vocab_size": len(vocabulary),
                   "feature_dim": encoder.feature_dim("grid"), **TINY}, seed=2)
    optimizer = Adam(model, lr=1e-3) if with_optimizer else None
    if optimizer is not None:   # one step, so the optimizer has moment buffers to save
        for _, param, grad in model.named_parameters():
            grad[...] = 0.01
        optimizer.step()
    save_checkpoint(path, model, vocabulary, encoder.spec, encoder_state=encoder.state_dict(),
                    optimizer=optimizer, training={"progress": {}})
    return path


def _rewrite(source, target, change):
    arrays, meta = load_npz(source)
    change(arrays)
    save_npz(target, arrays, meta=meta)
    return target


def _load_everything(path):
    ckpt = load_checkpoint(path)
    make_encoder(ckpt.encoder, ckpt.encoder_state, dtype=ckpt.model.dtype)
    return ckpt


def test_the_tiny_checkpoint_loads(tmp_path):
    ckpt = _load_everything(tiny_checkpoint(tmp_path / "ok.npz"))
    assert ckpt.encoder_state and ckpt.optimizer_state


@pytest.mark.parametrize("bad", [numpy.nan, numpy.inf, -numpy.inf])
@pytest.mark.parametrize("key", ["decoder/W_out", "encoder/" + "{first}", "optim/m/W_out", "optim/lr"])
def test_non_finite_values_are_refused_naming_the_array(tmp_path, bad, key):
    good = tiny_checkpoint(tmp_path / "ok.npz")
    arrays, _ = load_npz(good)
    if "{first}" in key:
        key = sorted(k for k in arrays if k.startswith("encoder/"))[0]
    assert key in arrays, sorted(arrays)

    def poison(arrays):
        arrays[key] = arrays[key].copy()
        arrays[key].flat[0] = bad
    path = _rewrite(good, tmp_path / "bad.npz", poison)
    with pytest.raises(ConfigMismatchError, match=rf"bad.npz: array '{key}' holds 1 non-finite value"):
        _load_everything(path)


def test_integer_parameters_are_refused_not_cast(tmp_path):
    good = tiny_checkpoint(tmp_path / "ok.npz")

    def to_int(arrays):
        arrays["decoder/W_out"] = (arrays["decoder/W_out"] * 100).astype(numpy.int64)
    path = _rewrite(good, tmp_path / "int.npz", to_int)
    with pytest.raises(ConfigMismatchError, match="'decoder/W_out' has dtype int64, not a floating-point"):
        load_checkpoint(path)


def test_missing_encoder_arrays_are_an_error_not_a_fresh_cnn(tmp_path):
    good = tiny_checkpoint(tmp_path / "ok.npz")

    def drop_all(arrays):
        for key in [k for k in arrays if k.startswith("encoder/")]:
            del arrays[key]
    ckpt = load_checkpoint(_rewrite(good, tmp_path / "none.npz", drop_all))
    with pytest.raises(ConfigMismatchError, match="holds none of its small_cnn encoder's weights"):
        make_encoder(ckpt.encoder, ckpt.encoder_state, dtype=ckpt.model.dtype)

    def drop_one(arrays):
        del arrays[sorted(k for k in arrays if k.startswith("encoder/"))[-1]]
    ckpt = load_checkpoint(_rewrite(good, tmp_path / "one.npz", drop_one))
    with pytest.raises(ConfigMismatchError, match="missing"):
        make_encoder(ckpt.encoder, ckpt.encoder_state, dtype=ckpt.model.dtype)


def test_unexpected_arrays_are_refused(tmp_path):
    good = tiny_checkpoint(tmp_path / "ok.npz")
    path = _rewrite(good, tmp_path / "extra.npz", lambda arrays: arrays.update(stray=numpy.zeros(2)))
    with pytest.raises(ConfigMismatchError, match="unexpected array 'stray'"):
        load_checkpoint(path)
    ckpt = load_checkpoint(good)
    with pytest.raises(ConfigMismatchError, match="frozen"):   # CNN weights for a frozen encoder
        make_encoder({"name": "efficientnet_lite0"}, ckpt.encoder_state)


def test_cli_reports_a_nan_checkpoint_in_one_line(tmp_path, capsys):
    good = tiny_checkpoint(tmp_path / "ok.npz")

    def poison(arrays):
        arrays["decoder/W_embed"] = numpy.full_like(arrays["decoder/W_embed"], numpy.nan)
    path = _rewrite(good, tmp_path / "nan.npz", poison)
    assert main(["evaluate", "--checkpoint", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert "array 'decoder/W_embed' holds" in err and "non-finite" in err


def test_module_load_state_dict_refuses_nan_and_integers_changing_nothing():
    model = layers.Sequential(layers.Affine(3, 2, seed=0))
    before = {k: v.copy() for k, v in model.state_dict().items()}
    for value, message in [(numpy.full((3, 2), numpy.nan), "non-finite"),
                           (numpy.ones((3, 2), dtype=numpy.int64), "int64, not a floating-point")]:
        state = dict(before, **{"0.w": value})
        with pytest.raises(ValueError, match=f"'0.w'.*{message}"):
            model.load_state_dict(state)
        for name, saved in model.state_dict().items():
            numpy.testing.assert_array_equal(saved, before[name])


def test_check_parameter_values_passes_finite_floats():
    check_parameter_values({"a": numpy.zeros(3, numpy.float16), "b": numpy.ones((2, 2))})
    with pytest.raises(ValueError, match="'b' has dtype bool"):
        check_parameter_values({"a": numpy.zeros(3), "b": numpy.ones(2, bool)})


@pytest.mark.parametrize("field, value, message", [
    ("hidden_dim", 2 ** 40, "makes [\\d,]+ parameter values, more than the [\\d,]+ allowed here"),
    ("feature_dim", 2 ** 33, "makes [\\d,]+ parameter values"),
])
def test_a_damaged_size_is_refused_before_allocating(tmp_path, field, value, message):
    good = tiny_checkpoint(tmp_path / "ok.npz")
    arrays, meta = load_npz(good)
    meta["model"][field] = value
    save_npz(tmp_path / "big.npz", arrays, meta=meta)
    with pytest.raises(ConfigMismatchError, match=message):
        load_checkpoint(tmp_path / "big.npz")


@pytest.mark.parametrize("record, value", [("encoder", 5), ("training", "x"), ("encoder", {"name": "small_cnn",
                                                                                          "config": 3})])
def test_damaged_records_are_refused(tmp_path, record, value):
    good = tiny_checkpoint(tmp_path / "ok.npz")
    arrays, meta = load_npz(good)
    meta[record] = value
    save_npz(tmp_path / "bad.npz", arrays, meta=meta)
    with pytest.raises(ConfigMismatchError, match="damaged"):
        _load_everything(tmp_path / "bad.npz")


def test_a_negative_running_variance_is_refused(tmp_path):
    good = tiny_checkpoint(tmp_path / "ok.npz")
    key = sorted(k for k in load_npz(good)[0] if k.endswith("running_var"))[0]

    def negative(arrays):
        arrays[key] = -arrays[key]
    ckpt = load_checkpoint(_rewrite(good, tmp_path / "neg.npz", negative))
    with pytest.raises(ConfigMismatchError, match=f"{key[len('encoder/'):]} holds negative values"):
        make_encoder(ckpt.encoder, ckpt.encoder_state, dtype=ckpt.model.dtype)


@pytest.mark.parametrize("size", [0, 1, 1000000, "64"])
def test_a_damaged_encoder_image_size_is_refused(tmp_path, size):
    ckpt = load_checkpoint(tiny_checkpoint(tmp_path / "ok.npz"))
    spec = {**ckpt.encoder, "config": {**ckpt.encoder["config"], "image_size": size}}
    with pytest.raises(ConfigMismatchError, match="image_size must be an int from"):
        make_encoder(spec, ckpt.encoder_state, dtype=ckpt.model.dtype)
