"""Layer objects: the Module tree, gradient checks through the Module API, state dicts, backends."""
import numpy
import pytest

from conftest import as_xp
from nn import backend, layers, optim
from nn import functional as F
from nn.gradcheck import eval_numerical_gradient, rel_error

LAYER_TOL = 1e-7     # a single layer
CHAIN_TOL = 1e-6     # a stack of layers (errors compound a little)
RECURRENT_TOL = 1e-5


def host(a):
    return backend.to_numpy(a)


def normal(xp, shape, seed):
    return as_xp(xp, numpy.random.default_rng(seed).standard_normal(shape))


def check_module_gradients(model, inputs, dout, tol, forward=None):
    """Compare model.backward with numerical gradients of sum(forward() * dout).

    Checks every parameter (by dotted name) and every input gradient that
    backward returns. Returns the worst relative error seen.
    """
    forward = forward or (lambda: model.forward(*inputs))
    out = forward()
    assert out.shape == dout.shape
    dinputs = model.backward(dout)
    if not isinstance(dinputs, tuple):
        dinputs = (dinputs,)

    def loss():
        return float((forward() * dout).sum())

    worst = 0.0
    for name, param, grad in model.named_parameters():
        numeric = eval_numerical_gradient(loss, param)
        err = rel_error(numeric, grad)
        assert err < tol, f"gradient of {name}: relative error {err:.2e}"
        worst = max(worst, err)
    for index, (x, dx) in enumerate(zip(inputs, dinputs)):
        numeric = eval_numerical_gradient(loss, x)
        err = rel_error(numeric, dx)
        assert err < tol, f"gradient of input {index}: relative error {err:.2e}"
        worst = max(worst, err)
    return worst


class Captioner(layers.Module):
    """A tiny model with nested children, as the captioning code builds them."""

    def __init__(self, vocab=7, dim=3, hidden=4, seed=0):
        super().__init__()
        self.decoder = self.add_child("decoder", layers.Module())
        self.embed = self.decoder.add_child("embed", layers.Embedding(vocab, dim, seed=seed))
        self.lstm = self.decoder.add_child("lstm", layers.LSTM(dim, hidden, seed=seed + 1))
        self.head = self.add_child("head", layers.TemporalAffine(hidden, vocab, seed=seed + 2))

    def forward(self, words, h0):
        return self.head.forward(self.lstm.forward(self.embed.forward(words), h0))

    def backward(self, dscores):
        dx, dh0 = self.lstm.backward(self.head.backward(dscores))
        self.embed.backward(dx)
        return dh0


# ---------------------------------------------------------------- the Module tree

def test_tree_names_modes_and_counts():
    model = Captioner()
    names = [name for name, _, _ in model.named_parameters()]
    assert names == ["decoder.embed.W", "decoder.lstm.Wx", "decoder.lstm.Wh", "decoder.lstm.b",
                     "head.w", "head.b"]
    # V*D + D*4H + H*4H + 4H + H*V + V
    assert model.num_parameters() == 7 * 3 + 3 * 16 + 4 * 16 + 16 + 4 * 7 + 7
    assert [name for name, _ in model.named_modules()] == ["", "decoder", "decoder.embed",
                                                           "decoder.lstm", "head"]
    assert model.eval() is model
    assert not any(m.training for _, m in model.named_modules())
    model.train()
    assert all(m.training for _, m in model.named_modules())
    with pytest.raises(ValueError, match="already used"):
        model.add_child("head", layers.ReLU())
    with pytest.raises(ValueError, match="without '.'"):
        model.add_child("a.b", layers.ReLU())
    with pytest.raises(TypeError, match="Module"):
        model.add_child("x", object())
    text = repr(model)
    assert "(lstm): LSTM(Wx=(3, 16)" in text


def test_backward_overwrites_grads_in_place():
    backend.set_default_float(numpy.float64)
    layer = layers.Affine(3, 2, seed=0)
    w_grad = layer.grads["w"]
    x = normal(numpy, (4, 3), 1)
    dout = normal(numpy, (4, 2), 2)
    layer.forward(x)
    layer.backward(dout)
    first = layer.grads["w"].copy()
    numpy.testing.assert_allclose(first, x.T @ dout)
    layer.forward(x)
    layer.backward(dout)
    numpy.testing.assert_allclose(layer.grads["w"], first)  # overwritten, not accumulated
    assert layer.grads["w"] is w_grad                       # same array: references stay valid
    layer.zero_grad()
    assert not layer.grads["w"].any()
    with pytest.raises(RuntimeError, match="before forward"):
        layers.Affine(3, 2).backward(dout)


def test_initialisation_seeds_scale_and_dtype():
    a = layers.Affine(400, 300, seed=5)
    b = layers.Affine(400, 300, seed=5)
    c = layers.Affine(400, 300, seed=6)
    numpy.testing.assert_array_equal(a.params["w"], b.params["w"])
    assert not numpy.array_equal(a.params["w"], c.params["w"])
    assert a.params["w"].dtype == backend.default_float()
    assert abs(float(a.params["w"].std()) * numpy.sqrt(400) - 1) < 0.02
    assert not a.params["b"].any()
    conv = layers.Conv2d(8, 16, 3, rng=numpy.random.default_rng(0), dtype=numpy.float64)
    assert conv.params["w"].dtype == numpy.float64
    assert abs(float(conv.params["w"].std()) * numpy.sqrt(8 * 9 / 2) - 1) < 0.05
    lstm = layers.LSTM(3, 5, forget_bias=1.0, seed=0)
    numpy.testing.assert_array_equal(lstm.params["b"], [0] * 5 + [1] * 5 + [0] * 10)
    with pytest.raises(ValueError, match="seed= or rng="):
        layers.Affine(2, 2, seed=1, rng=numpy.random.default_rng(1))


def test_embeddings_start_like_the_caption_models_word_vectors():
    from captioning.models import build
    from nn import init
    embed = layers.Embedding(600, 40, seed=3, dtype=numpy.float64)
    numpy.testing.assert_array_equal(
        embed.params["W"], init.embedding_normal(numpy.random.default_rng(3), (600, 40), numpy.float64))
    assert abs(float(embed.params["W"].std()) / init.EMBEDDING_STD - 1) < 0.02
    model = build({"model": "show-tell", "vocab_size": 600, "feature_dim": 8, "wordvec_dim": 40,
                   "hidden_dim": 8}, dtype=numpy.float64)
    assert abs(float(model.params["W_embed"].std()) / init.EMBEDDING_STD - 1) < 0.02


# ---------------------------------------------------------------- gradient checks

def test_conv_batchnorm_pool_affine_stack_gradients(xp):
    backend.set_default_float(numpy.float64)
    model = layers.Sequential(
        # no conv bias: batchnorm subtracts the mean, so its gradient would be exactly 0
        layers.Conv2d(2, 3, 3, stride=2, pad="same", bias=False, seed=0),
        layers.BatchNorm2d(3),
        layers.ReLU(),
        layers.GlobalAvgPool(),
        layers.Affine(3, 2, seed=1),
    )
    assert [n for n, _, _ in model.named_parameters()] == [
        "0.w", "1.gamma", "1.beta", "4.w", "4.b"]
    x = normal(xp, (4, 2, 6, 5), 2)
    dout = normal(xp, (4, 2), 3)
    worst = check_module_gradients(model, [x], dout, CHAIN_TOL)
    assert worst < CHAIN_TOL


def test_conv2d_same_padding_groups_no_bias(xp):
    backend.set_default_float(numpy.float64)
    conv = layers.Conv2d(4, 6, (3, 2), stride=2, pad="same", groups=2, bias=False, seed=0)
    assert list(conv.params) == ["w"] and conv.params["w"].shape == (6, 2, 3, 2)
    # H = 6: out 3, total pad (3-1)*2+3-6 = 1 -> (0, 1); W = 5: out 3, total (3-1)*2+2-5 = 1
    assert conv.padding_for(6, 5) == (0, 1, 0, 1)
    assert conv.padding_for(7, 7) == (1, 1, 0, 1)
    x = normal(xp, (2, 4, 6, 5), 1)
    assert conv.forward(x).shape == (2, 6, 3, 3)
    check_module_gradients(conv, [x], normal(xp, (2, 6, 3, 3), 2), LAYER_TOL)
    depthwise = layers.Conv2d(3, 3, 3, pad=(1, 0), groups=3, seed=0)
    x = normal(xp, (1, 3, 4, 4), 3)
    assert depthwise.forward(x).shape == (1, 3, 4, 2)
    check_module_gradients(depthwise, [x], normal(xp, (1, 3, 4, 2), 4), LAYER_TOL)


def test_conv2d_forward_value_and_bad_options():
    backend.set_default_float(numpy.float64)
    conv = layers.Conv2d(1, 1, 1, seed=0)
    conv.params["w"][...] = 2.0
    conv.params["b"][...] = 0.5
    x = numpy.arange(4.0).reshape(1, 1, 2, 2)
    numpy.testing.assert_allclose(conv.forward(x), 2 * x + 0.5)
    with pytest.raises(ValueError, match="divisible by groups"):
        layers.Conv2d(3, 4, 3, groups=2)
    with pytest.raises(ValueError, match="pad"):
        layers.Conv2d(3, 4, 3, pad="full")
    with pytest.raises(ValueError, match="pad"):
        layers.Conv2d(3, 4, 3, pad=(1, 2, 3))
    with pytest.raises(ValueError, match="4-D"):
        conv.forward(numpy.zeros((2, 2)))


def test_dense_activation_stack_gradients(xp):
    backend.set_default_float(numpy.float64)
    model = layers.Sequential(
        layers.Affine(6, 5, bias=False, seed=0), layers.BatchNorm1d(5), layers.Tanh(),
        layers.Affine(5, 5, seed=1), layers.Sigmoid(),
        layers.Affine(5, 4, weight_scale=6.0, seed=2), layers.ReLU6(),
        layers.Affine(4, 4, seed=3), layers.ReLU(), layers.Affine(4, 3, seed=4),
    )
    assert "0.b" not in dict((n, p) for n, p, _ in model.named_parameters())
    model[5].params["b"][...] = 3.0  # centre the ReLU6 inputs so that both kinks are crossed
    x = normal(xp, (5, 2, 3), 4)     # Affine flattens (2, 3) -> 6
    model.forward(x)
    relu6_input = host(model[6].cache)
    assert (relu6_input < 0).any() and (relu6_input > 6).any()
    for kink_input, kinks in ((relu6_input, (0, 6)), (host(model[8].cache), (0,))):
        assert min(numpy.abs(kink_input - k).min() for k in kinks) > 1e-3  # no kink within h
    check_module_gradients(model, [x], normal(xp, (5, 3), 5), CHAIN_TOL)


def test_sequence_model_gradients_through_nested_modules(xp):
    backend.set_default_float(numpy.float64)
    model = Captioner(seed=3)
    words = xp.asarray(numpy.array([[1, 4, 4], [0, 6, 2]]))
    h0 = normal(xp, (2, 4), 1)
    dscores = normal(xp, (2, 3, 7), 2)
    worst = check_module_gradients(model, [h0], dscores, RECURRENT_TOL,
                                   forward=lambda: model.forward(words, h0))
    assert worst < RECURRENT_TOL
    # the repeated word 4 receives the sum of both positions' gradients
    assert model.embed.backward(xp.ones((2, 3, 3))) is None
    numpy.testing.assert_allclose(host(model.embed.grads["W"])[4], [2.0, 2.0, 2.0])


def test_lstm_layer_matches_functional_and_zero_h0(xp):
    backend.set_default_float(numpy.float64)
    lstm = layers.LSTM(3, 4, seed=0)
    x = normal(xp, (2, 5, 3), 1)
    h = lstm.forward(x)
    zeros = xp.zeros((2, 4))
    expected, _ = F.lstm_forward(x, zeros, lstm.params["Wx"], lstm.params["Wh"], lstm.params["b"])
    numpy.testing.assert_allclose(host(h), host(expected), rtol=1e-12)
    dx, dh0 = lstm.backward(xp.ones_like(h))
    assert dx.shape == (2, 5, 3) and dh0.shape == (2, 4)
    with pytest.raises(ValueError, match="3-D"):
        lstm.forward(x[0])


def test_batchnorm2d_running_stats_train_then_eval(xp):
    backend.set_default_float(numpy.float64)
    bn = layers.BatchNorm2d(2, eps=1e-3, momentum=0.5)
    x = normal(xp, (3, 2, 2, 2), 0) * 2 + 1
    bn.forward(x)
    mean = host(x).mean(axis=(0, 2, 3))
    var = host(x).var(axis=(0, 2, 3))
    numpy.testing.assert_allclose(host(bn.buffers["running_mean"]), 0.5 * mean, rtol=1e-12)
    numpy.testing.assert_allclose(host(bn.buffers["running_var"]), 0.5 + 0.5 * var, rtol=1e-12)
    bn.eval()
    bn.params["gamma"][...] = xp.asarray(numpy.array([2.0, 3.0]))
    out = host(bn.forward(x))
    rm = 0.5 * mean
    rv = 0.5 + 0.5 * var
    expected = (host(x) - rm[None, :, None, None]) / numpy.sqrt(rv + 1e-3)[None, :, None, None]
    expected *= numpy.array([2.0, 3.0])[None, :, None, None]
    numpy.testing.assert_allclose(out, expected, rtol=1e-10)
    numpy.testing.assert_allclose(host(bn.buffers["running_mean"]), rm)  # eval does not update
    assert set(bn.state_dict()) == {"gamma", "beta", "running_mean", "running_var"}
    check_module_gradients(bn, [x], normal(xp, x.shape, 1), LAYER_TOL)  # eval-mode gradient


def test_pooling_layers_values_and_gradients(xp):
    backend.set_default_float(numpy.float64)
    x = as_xp(xp, numpy.arange(16.0).reshape(1, 1, 4, 4))
    numpy.testing.assert_allclose(host(layers.MaxPool2d(2).forward(x))[0, 0], [[5, 7], [13, 15]])
    numpy.testing.assert_allclose(host(layers.AvgPool2d(2).forward(x))[0, 0], [[2.5, 4.5], [10.5, 12.5]])
    numpy.testing.assert_allclose(host(layers.GlobalAvgPool().forward(x)), [[7.5]])
    x = normal(xp, (2, 3, 5, 5), 0)
    for layer, out_shape in ((layers.MaxPool2d(3, stride=2), (2, 3, 2, 2)),
                             (layers.AvgPool2d((2, 3), stride=1), (2, 3, 4, 3)),
                             (layers.GlobalAvgPool(), (2, 3))):
        assert layer.forward(x).shape == out_shape
        check_module_gradients(layer, [x], normal(xp, out_shape, 1), LAYER_TOL)


def test_dropout_layer_train_eval_and_reproducible_masks(xp):
    backend.set_default_float(numpy.float64)
    x = xp.ones((200, 50))
    drop = layers.Dropout(0.25, seed=0)
    first = host(drop.forward(x))
    assert set(numpy.unique(first)) == {0.0, 1 / 0.75}
    assert abs((first == 0).mean() - 0.25) < 0.02
    dout = normal(xp, x.shape, 1)
    numpy.testing.assert_allclose(host(drop.backward(dout)), host(dout) * first)
    second = host(drop.forward(x))
    assert not numpy.array_equal(first, second)        # a fresh mask each call
    again = layers.Dropout(0.25, seed=0)
    numpy.testing.assert_array_equal(host(again.forward(x)), first)  # same seed, same masks
    numpy.testing.assert_array_equal(host(again.forward(x)), second)
    drop.eval()
    numpy.testing.assert_array_equal(host(drop.forward(x)), host(x))
    with pytest.raises(ValueError, match="drop probability"):
        layers.Dropout(1.0)


# ---------------------------------------------------------------- state dicts and backends

def test_state_dict_round_trip_and_copies():
    backend.set_default_float(numpy.float64)
    source = Captioner(seed=0)
    target = Captioner(seed=10)
    state = source.state_dict()
    state["head.b"][...] = 7.0  # a copy: the source is not changed
    assert not source.head.params["b"].any()
    w_before = target.head.params["w"]
    assert target.load_state_dict(state) == ([], [])
    assert target.head.params["w"] is w_before  # loaded in place
    numpy.testing.assert_array_equal(target.head.params["b"], numpy.full(7, 7.0))
    numpy.testing.assert_array_equal(target.lstm.params["Wh"], source.lstm.params["Wh"])
    # float32 values are cast to the model's dtype
    state32 = {k: v.astype(numpy.float32) for k, v in source.state_dict().items()}
    target.load_state_dict(state32)
    assert target.lstm.params["Wx"].dtype == numpy.float64


def test_load_state_dict_errors_name_what_differs():
    model = Captioner(vocab=7, hidden=4)
    state = Captioner(vocab=8, hidden=4).state_dict()
    del state["decoder.lstm.b"]
    state["decoder.extra"] = numpy.zeros(3)
    before = model.state_dict()
    with pytest.raises(ValueError) as info:
        model.load_state_dict(state)
    message = str(info.value)
    assert "missing (in the model, not in the saved state): decoder.lstm.b" in message
    assert "unexpected (saved, not in the model): decoder.extra" in message
    assert "decoder.embed.W: saved (8, 3), model (7, 3)" in message
    assert "head.w: saved (4, 8), model (4, 7)" in message
    assert "head.b: saved (8,), model (7,)" in message
    for key, value in model.state_dict().items():
        numpy.testing.assert_array_equal(value, before[key])  # nothing changed
    # strict=False tolerates missing / unexpected names, never a shape mismatch
    good = Captioner().state_dict()
    del good["head.b"]
    good["other"] = numpy.zeros(1)
    assert model.load_state_dict(good, strict=False) == (["head.b"], ["other"])
    with pytest.raises(ValueError, match="shape mismatch"):
        model.load_state_dict(state, strict=False)


def test_to_backend_round_trip(xp):
    backend.set_default_float(numpy.float64)
    backend.use("numpy")
    model = layers.Sequential(layers.Conv2d(1, 2, 3, pad=1, seed=0), layers.BatchNorm2d(2),
                              layers.GlobalAvgPool(), layers.Affine(2, 3, seed=1))
    x = numpy.random.default_rng(0).standard_normal((2, 1, 4, 4))
    expected = model.forward(x)
    reference = model.state_dict()
    backend.use(xp.__name__)
    assert model.to_backend() is model
    assert model[0].cache is None
    for name, param, grad in model.named_parameters():
        assert backend.get_array_module(param, grad) is xp, name
        assert param.dtype == numpy.float64
    for name, value in model.named_buffers():
        assert backend.get_array_module(value) is xp, name
    opt = optim.Adam(model, lr=1e-3)
    out = model.forward(xp.asarray(x))
    numpy.testing.assert_allclose(host(out), expected, rtol=1e-10)
    model.backward(xp.ones_like(out))
    opt.step()
    backend.use("numpy")
    model.to_backend()
    for name, value in model.state_dict().items():
        assert isinstance(value, numpy.ndarray), name
    # running statistics were updated twice, parameters once by Adam
    assert not numpy.array_equal(model.state_dict()["3.w"], reference["3.w"])
    opt.step()  # optimizer buffers follow the parameters back to NumPy
    assert isinstance(opt.state["m"]["3.w"], numpy.ndarray)


def test_dropout_refuses_both_seed_and_rng():
    with pytest.raises(ValueError, match="either seed= or rng="):
        layers.Dropout(0.5, seed=1, rng=numpy.random.default_rng(2))


def test_load_state_dict_changes_nothing_when_a_value_does_not_cast():
    model = layers.Sequential(layers.Affine(3, 2, seed=0), layers.Affine(2, 1, seed=1))
    before = {k: v.copy() for k, v in model.state_dict().items()}
    state = dict(before)
    state["0.w"] = before["0.w"] + 1
    state["1.w"] = numpy.full(before["1.w"].shape, "abc")          # right name and shape, not numbers
    with pytest.raises(ValueError, match="1.w. has dtype <U3, not a floating-point type"):
        model.load_state_dict(state)
    for name, value in model.state_dict().items():
        numpy.testing.assert_array_equal(value, before[name])
