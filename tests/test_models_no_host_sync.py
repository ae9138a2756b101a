"""No host-device synchronisation inside the models' time loops (issue 17).

On CuPy, turning an array into a Python value (float(), int(), bool(),
.item(), .tolist(), `if array:`) waits for the GPU to finish everything queued
so far: inside a loop over time steps that stalls the GPU once per step while
Python launches the next kernels. Here, on NumPy, the model's parameters, its
features and every buffer it makes (xp.empty, xp.ascontiguousarray, ...) are
arrays of a subclass that refuses those reads while a training step's
`_step_forward` / `_step_backward` run (reductions and scalar indexing stay
arrays of the subclass, as they stay CuPy arrays on the GPU). Reads outside
the loops (the loss, the input checks: a few per training step) are allowed.
"""
import numpy
import pytest

from captioning.models import build

_reading_refused = {"on": False}
_asarray = numpy.asarray
# What makes a base-class array out of nothing or out of ours: patched to make ours during the test.
_MAKERS = ("empty", "zeros", "ones", "full", "array", "asarray", "ascontiguousarray")


class _NoHostRead(numpy.ndarray):
    """An array that raises when read as a Python value while `_reading_refused["on"]`."""

    def __array_wrap__(self, array, context=None, return_scalar=False):
        return super().__array_wrap__(array, context, False)      # a full reduction stays an array

    def __array_function__(self, func, types, args, kwargs):              # numpy.where, einsum, ...
        return _refusing(super().__array_function__(func, types, args, kwargs))

    def __getitem__(self, key):
        return _refusing(super().__getitem__(key))

    def _refuse(self, how):
        if _reading_refused["on"]:
            raise AssertionError(f"{how} of an array inside the time loop: a host sync on the GPU")

    def __bool__(self):
        self._refuse("bool()")
        return super().__bool__()

    def __float__(self):
        self._refuse("float()")
        return super().__float__()

    def __int__(self):
        self._refuse("int()")
        return super().__int__()

    def __index__(self):
        self._refuse("an index")
        return super().__index__()

    def item(self, *args):
        self._refuse(".item()")
        return super().item(*args)

    def tolist(self):
        self._refuse(".tolist()")
        return super().tolist()


def _refusing(result):
    """Arrays and scalars (and tuples of them) as _NoHostRead arrays; anything else as it is."""
    if isinstance(result, tuple):
        return tuple(_refusing(r) for r in result)
    if isinstance(result, (numpy.ndarray, numpy.generic)):
        return _asarray(result).view(_NoHostRead)
    return result


def _refusing_reads(method):
    def run(*args, **kwargs):
        _reading_refused["on"] = True
        try:
            return method(*args, **kwargs)
        finally:
            _reading_refused["on"] = False
    return run


def test_the_reads_are_refused_only_inside_the_steps():
    x = numpy.arange(4.0).view(_NoHostRead)
    assert float(x.sum()) == 6.0 and bool(x[3] > 2)
    with pytest.raises(AssertionError, match="host sync"):
        _refusing_reads(lambda: float(x.max()))()
    with pytest.raises(AssertionError, match="host sync"):
        _refusing_reads(lambda: bool((x > 1).any()))()


def _model_on_refusing_arrays(monkeypatch, config, feature_shape):
    """(model, features, captions) of a tiny model whose parameters, features and buffers
    (xp.empty, ...) are all _NoHostRead arrays; 3 captions of 6 tokens, one ending early."""
    model = build(config, seed=1)
    for name in _MAKERS:                            # the model's buffers (xp.empty, ...) are ours too
        make = getattr(numpy, name)
        monkeypatch.setattr(numpy, name, lambda *a, _make=make, **k: _make(*a, **k).view(_NoHostRead))
    model.params = {name: value.view(_NoHostRead) for name, value in model.params.items()}
    gen = numpy.random.default_rng(2)
    features = gen.standard_normal(feature_shape).astype(model.dtype).view(_NoHostRead)
    captions = gen.integers(3, 11, size=(3, 6))
    captions[:, 0], captions[1, 3], captions[1, 4:] = 1, 2, 0
    return model, features, captions


@pytest.mark.parametrize("feature_grad", [False, True])
def test_attention_training_step_reads_nothing_back_inside_its_time_loops(monkeypatch, feature_grad):
    config = {"model": "attention", "vocab_size": 11, "feature_dim": 6, "wordvec_dim": 5, "hidden_dim": 7,
              "attention_dim": 4, "dropout": 0.3, "doubly_stochastic": 1.0}
    model, features, captions = _model_on_refusing_arrays(monkeypatch, config, (3, 5, 6))
    steps = []
    for name in ("_step_forward", "_step_backward"):
        method = getattr(model, name)
        monkeypatch.setattr(model, name, _refusing_reads(lambda *a, _m=method, _n=name: steps.append(_n) or _m(*a)))
    loss, grads, _ = model.forward_backward(features, captions, feature_grad=feature_grad, dropout_seed=3)
    assert steps == ["_step_forward"] * 5 + ["_step_backward"] * 5
    assert numpy.isfinite(loss) and all(numpy.isfinite(g).all() for g in grads.values())


@pytest.mark.parametrize("kind, module_name, layers", [("show-tell", "show_tell", 1), ("lrcn", "lrcn", 2)])
def test_lstm_models_read_nothing_back_inside_their_time_loops(monkeypatch, kind, module_name, layers):
    """Show-Tell and LRCN run each LSTM layer as one nn.recurrent lstm_forward / lstm_backward,
    whose time loops are the whole call: no reads anywhere inside them."""
    import importlib

    module = importlib.import_module(f"captioning.models.{module_name}")
    config = {"model": kind, "vocab_size": 11, "feature_dim": 6, "wordvec_dim": 5, "hidden_dim": 7, "dropout": 0.3}
    model, features, captions = _model_on_refusing_arrays(monkeypatch, config, (3, 6))
    calls = []
    for name in ("lstm_forward", "lstm_backward"):
        function = getattr(module, name)
        monkeypatch.setattr(module, name, _refusing_reads(
            lambda *a, _f=function, _n=name: calls.append(_n) or _f(*a)))
    loss, grads, _ = model.forward_backward(features, captions, feature_grad=True, dropout_seed=3)
    assert calls == ["lstm_forward"] * layers + ["lstm_backward"] * layers
    assert numpy.isfinite(loss) and all(numpy.isfinite(g).all() for g in grads.values())
