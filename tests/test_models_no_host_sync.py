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
An output whose size depends on the values (xp.nonzero, boolean-mask
indexing) is a read too: the GPU must report the size before Python can go on.

Decoding must read one number per step (how many images are done, to know
when to stop): the decoding tests log every read and count them per step.
"""
import numpy
import pytest

from captioning.models import build

_reading_refused = {"on": False}
_read_log = []          # every read, while the decoding tests log them: (what, when)
_logging_reads = {"on": False}
_in_sized_call = {"on": False}      # inside numpy.nonzero & co., already counted as one read
_asarray = numpy.asarray
# What makes a base-class array out of nothing or out of ours: patched to make ours during the test.
_MAKERS = ("empty", "zeros", "ones", "full", "array", "asarray", "ascontiguousarray")


class _NoHostRead(numpy.ndarray):
    """An array that raises when read as a Python value while `_reading_refused["on"]`."""

    def __array_wrap__(self, array, context=None, return_scalar=False):
        return super().__array_wrap__(array, context, False)      # a full reduction stays an array

    def __array_function__(self, func, types, args, kwargs):              # numpy.where, einsum, ...
        if _in_sized_call["on"] or not (func in _SIZED_BY_VALUES or (func is numpy.where and len(args) == 1)):
            return _refusing(super().__array_function__(func, types, args, kwargs))
        self._refuse(f"{func.__name__}() (its size)")
        _in_sized_call["on"] = True            # one read, whatever it calls inside (numpy.nonzero -> .nonzero())
        try:
            return _refusing(super().__array_function__(func, types, args, kwargs))
        finally:
            _in_sized_call["on"] = False

    def __getitem__(self, key):
        if any(getattr(k, "dtype", None) == bool and k.ndim for k in (key if isinstance(key, tuple) else (key,))):
            self._refuse("boolean-mask indexing (its size)")
        return _refusing(super().__getitem__(key))

    def nonzero(self):
        self._refuse("nonzero() (its size)")
        return _refusing(super().nonzero())

    def _refuse(self, how):
        if _in_sized_call["on"]:
            return
        if _logging_reads["on"]:
            _read_log.append(how)
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


_SIZED_BY_VALUES = (numpy.nonzero, numpy.flatnonzero, numpy.argwhere, numpy.unique, numpy.compress,
                    numpy.extract)


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
    assert float(x.sum()) == 6.0 and bool(x[3] > 2) and len(x[x > 1]) == 2
    reads = (lambda: float(x.max()), lambda: bool((x > 1).any()), lambda: numpy.nonzero(x > 1),
             lambda: (x > 1).nonzero(), lambda: numpy.where(x > 1), lambda: numpy.flatnonzero(x > 1),
             lambda: x[x > 1], lambda: x[:, None][x > 1, 0])
    for read in reads:
        with pytest.raises(AssertionError, match="host sync"):
            _refusing_reads(read)()
    _logging_reads["on"] = True
    try:
        for read in reads:               # each is one read, however numpy carries it out
            _read_log.clear()
            read()
            assert len(_read_log) == 1, _read_log
    finally:
        _logging_reads["on"] = False
    assert numpy.array_equal(numpy.where(x > 1, x, 0), [0, 0, 2, 3])     # three arguments: no size to report
    assert numpy.array_equal(_refusing_reads(lambda: x[numpy.argsort(x > 1, kind="stable")[:2]])(), [0, 1])


def _model_on_refusing_arrays(monkeypatch, config, feature_shape, buffers=True):
    """(model, features, captions) of a tiny model whose parameters, features and buffers
    (xp.empty, ...) are all _NoHostRead arrays; 3 captions of 6 tokens, one ending early.
    buffers=False: new arrays stay NumPy's (for code that keeps host arrays on purpose; what it
    computes from the parameters and features is still ours)."""
    model = build(config, seed=1)
    for name in _MAKERS if buffers else ():         # the model's buffers (xp.empty, ...) are ours too
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


def _reads_per_decoding_step(monkeypatch, model, decode):
    """Run decode() with every host read logged; the reads between one decode_step call and the
    next (the step's own included) per step, and how many times finished images were dropped."""
    import captioning.decoding as decoding

    marks, drops = [], []
    step = model.decode_step
    monkeypatch.setattr(model, "decode_step", lambda *a: marks.append(len(_read_log)) or step(*a))
    drop = decoding._drop_finished
    monkeypatch.setattr(decoding, "_drop_finished", lambda *a: drops.append(1) or drop(*a))
    # Reads after the loop (laying the captions out on the host, which starts with the first
    # backend.to_numpy) belong to no step.
    host_layout_at = []
    to_numpy = decoding.backend.to_numpy
    monkeypatch.setattr(decoding.backend, "to_numpy", lambda a: host_layout_at.append(len(_read_log)) or to_numpy(a))
    _read_log.clear()
    monkeypatch.setitem(_logging_reads, "on", True)
    result = decode()
    ends = marks[1:] + host_layout_at[:1]
    return [_read_log[start:end] for start, end in zip(marks, ends)], len(drops), result


@pytest.mark.parametrize("config", [
    {"model": "show-tell", "vocab_size": 11, "feature_dim": 6, "wordvec_dim": 5, "hidden_dim": 7},
    {"model": "lrcn", "vocab_size": 11, "feature_dim": 6, "wordvec_dim": 5, "hidden_dim": 7},
    {"model": "attention", "vocab_size": 11, "feature_dim": 6, "wordvec_dim": 5, "hidden_dim": 7,
     "attention_dim": 4}], ids=["show-tell", "lrcn", "attention"])
@pytest.mark.parametrize("search", ["beam", "greedy"])
def test_decoding_reads_one_number_per_step(monkeypatch, config, search):
    """The one read is `int(done.sum())` (stop when all images are done); dropping finished images
    from the batch costs no second one, and n-gram and bad-ending blocking none at all."""
    from captioning.decoding import beam_search, greedy_decode

    shape = (24, 5, 6) if config["model"] == "attention" else (24, 6)
    model, features, _ = _model_on_refusing_arrays(monkeypatch, config, shape)
    model.params = {name: value * 4 for name, value in model.params.items()}   # images end at different steps
    options = dict(max_length=12, no_repeat_ngram=2, bad_ending_ids=(4,))
    if search == "beam":
        decode = lambda: beam_search(model, features, start_id=1, end_id=2, beam_size=3, **options)
    else:
        decode = lambda: greedy_decode(model, features, start_id=1, end_id=2, **options)
    reads, drops, result = _reads_per_decoding_step(monkeypatch, model, decode)
    assert drops >= 1 and len(reads) >= 2 and len(result.sequences) == 24
    assert all(len(step_reads) <= 1 for step_reads in reads), reads
    assert sum(map(len, reads)) == len(reads)          # and it is there at every step


@pytest.mark.parametrize("config, shape", [
    ({"model": "show-tell", "vocab_size": 11, "feature_dim": 6, "wordvec_dim": 5, "hidden_dim": 7}, (3, 6)),
    ({"model": "attention", "vocab_size": 11, "feature_dim": 6, "wordvec_dim": 5, "hidden_dim": 7,
      "attention_dim": 4, "doubly_stochastic": 1.0}, (3, 5, 6))], ids=["show-tell", "attention"])
def test_a_training_pass_reads_a_few_numbers_outside_its_time_loops(monkeypatch, config, shape):
    """Outside the time loops a forward_backward reads only: the captions' id range (one read for
    min and max), the word embedding's and the loss's own label checks (nn layers check their
    inputs), the loss, and the attention model's regulariser loss."""
    model, features, captions = _model_on_refusing_arrays(monkeypatch, config, shape)
    captions = numpy.asarray(captions).view(_NoHostRead)
    _read_log.clear()
    monkeypatch.setitem(_logging_reads, "on", True)
    model.forward_backward(features, captions, feature_grad=True, dropout_seed=3)
    expected = [".tolist()", "bool()", "bool()", "float()"] + ["float()"] * (config["model"] == "attention")
    assert _read_log == expected


def test_sampling_for_self_critical_training_reads_one_array_per_step(monkeypatch):
    """scst.sample_captions keeps its bookkeeping on the host: each step copies the drawn words
    there (backend.to_numpy, one read) and reads nothing else from the device."""
    from captioning import scst
    from nn import backend

    config = {"model": "attention", "vocab_size": 11, "feature_dim": 6, "wordvec_dim": 5, "hidden_dim": 7,
              "attention_dim": 4}
    # Its host arrays (tokens, lengths, live rows) are NumPy's; the device's are ours.
    model, features, _ = _model_on_refusing_arrays(monkeypatch, config, (6, 5, 6), buffers=False)
    model.eval()

    def to_numpy(a, _to_numpy=backend.to_numpy):
        if isinstance(a, _NoHostRead):
            _read_log.append("to_numpy()")
        return numpy.asarray(_to_numpy(a)).view(numpy.ndarray)
    monkeypatch.setattr(backend, "to_numpy", to_numpy)
    marks = []
    step = model.decode_step
    monkeypatch.setattr(model, "decode_step", lambda *a: marks.append(len(_read_log)) or step(*a))
    _read_log.clear()
    monkeypatch.setitem(_logging_reads, "on", True)
    tokens, lengths = scst.sample_captions(model, features, 8, numpy.random.default_rng(0), samples=3)
    reads = [_read_log[start:end] for start, end in zip(marks, marks[1:] + [len(_read_log)])]
    assert len(reads) == tokens.shape[1] >= 2 and reads == [["to_numpy()"]] * len(reads), reads
