"""Optimizers, clipping and schedules against updates computed by hand."""
import math

import numpy
import pytest

from nn import backend, optim
from nn.layers import Module
from conftest import as_xp


class TwoParams(Module):
    """A model with one weight matrix and one bias, gradients set by the test."""

    def __init__(self, xp, w, b):
        super().__init__()
        self.add_param("w", as_xp(xp, w).copy())  # copies: tests keep their originals
        self.add_param("b", as_xp(xp, b).copy())

    def set_grads(self, xp, dw, db):
        self.grads["w"][...] = as_xp(xp, dw)
        self.grads["b"][...] = as_xp(xp, db)


def host(a):
    return backend.to_numpy(a)


# ---------------------------------------------------------------- functional rules

def test_adam_function_first_two_steps_by_hand():
    w = numpy.array([1.0, -2.0])
    g1 = numpy.array([0.5, -0.1])
    g2 = numpy.array([-0.2, 0.3])
    config = {"learning_rate": 0.1}
    w1, config = optim.adam(w, g1, config)
    # step 1 (t=1): m = 0.1 g1, v = 0.001 g1^2, m_hat = g1, v_hat = g1^2
    expected1 = w - 0.1 * g1 / (numpy.abs(g1) + 1e-8)
    numpy.testing.assert_allclose(w1, expected1, rtol=1e-12)
    assert config["t"] == 1
    w2, config = optim.adam(w1, g2, config)
    m = 0.9 * (0.1 * g1) + 0.1 * g2
    v = 0.999 * (0.001 * g1 ** 2) + 0.001 * g2 ** 2
    expected2 = w1 - 0.1 * (m / (1 - 0.9 ** 2)) / (numpy.sqrt(v / (1 - 0.999 ** 2)) + 1e-8)
    numpy.testing.assert_allclose(w2, expected2, rtol=1e-12)
    assert config["t"] == 2
    assert not numpy.shares_memory(w2, w1)


def test_sgd_momentum_and_rmsprop_functions_by_hand():
    w = numpy.array([1.0])
    g = numpy.array([0.5])
    w1, cfg = optim.sgd_momentum(w, g, {"learning_rate": 0.1})
    w2, cfg = optim.sgd_momentum(w1, g, cfg)
    numpy.testing.assert_allclose([w1[0], w2[0]], [0.95, 0.855], rtol=1e-12)  # v = -0.05, -0.095
    r1, cfg = optim.rmsprop(w, g, {"learning_rate": 0.01})
    cache = 0.01 * 0.25
    numpy.testing.assert_allclose(r1, [1 - 0.01 * 0.5 / (math.sqrt(cache) + 1e-8)], rtol=1e-12)
    numpy.testing.assert_allclose(cfg["cache"], [cache], rtol=1e-12)
    s1, _ = optim.sgd(w, g, {"learning_rate": 0.1})
    numpy.testing.assert_allclose(s1, [0.95])


# ---------------------------------------------------------------- classes

def test_adam_class_matches_hand_computation_and_function(xp):
    w0 = numpy.array([[1.0, -2.0], [0.25, 3.0]])
    b0 = numpy.array([0.5, -0.5])
    model = TwoParams(xp, w0, b0)
    opt = optim.Adam(model, lr=0.1)
    grads = [(numpy.array([[0.5, -0.1], [2.0, 0.0]]), numpy.array([1.0, -1.0])),
             (numpy.array([[-0.2, 0.3], [1.0, 0.5]]), numpy.array([0.5, 0.5]))]
    w_ref, cfg = w0.copy(), {"learning_rate": 0.1}
    for dw, db in grads:
        model.set_grads(xp, dw, db)
        opt.step()
        w_ref, cfg = optim.adam(w_ref, dw, cfg)
    # by hand, independent of both implementations
    (g1, _), (g2, _) = grads
    w1 = w0 - 0.1 * g1 / (numpy.abs(g1) + 1e-8)
    m = 0.9 * 0.1 * g1 + 0.1 * g2
    v = 0.999 * 0.001 * g1 ** 2 + 0.001 * g2 ** 2
    w2 = w1 - 0.1 * (m / 0.19) / (numpy.sqrt(v / (1 - 0.999 ** 2)) + 1e-8)
    numpy.testing.assert_allclose(host(model.params["w"]), w2, rtol=1e-10, atol=1e-14)
    numpy.testing.assert_allclose(host(model.params["w"]), w_ref, rtol=1e-10, atol=1e-14)
    assert opt.t == 2


def test_sgd_momentum_class_in_place_by_hand(xp):
    model = TwoParams(xp, [[1.0]], [2.0])
    w_array = model.params["w"]
    opt = optim.SGD(model, lr=0.1)  # momentum 0.9 by default
    assert opt.momentum == 0.9
    for _ in range(2):
        model.set_grads(xp, [[0.5]], [-1.0])
        opt.step()
    assert model.params["w"] is w_array  # updated in place
    numpy.testing.assert_allclose(host(model.params["w"]), [[0.855]], rtol=1e-12)
    numpy.testing.assert_allclose(host(model.params["b"]), [2.0 + 0.1 + 0.19], rtol=1e-12)
    plain = optim.SGD(model, lr=0.1, momentum=0.0)
    plain.step()
    numpy.testing.assert_allclose(host(model.params["w"]), [[0.805]], rtol=1e-12)


def test_rmsprop_class_two_steps_by_hand(xp):
    model = TwoParams(xp, [[1.0]], [0.0])
    opt = optim.RMSprop(model, lr=0.01)
    assert (opt.decay_rate, opt.eps) == (0.99, 1e-8)
    w = 1.0
    cache = 0.0
    for g in (0.5, -2.0):
        model.set_grads(xp, [[g]], [0.0])
        opt.step()
        cache = 0.99 * cache + 0.01 * g * g
        w = w - 0.01 * g / (math.sqrt(cache) + 1e-8)
    numpy.testing.assert_allclose(host(model.params["w"]), [[w]], rtol=1e-12)
    numpy.testing.assert_allclose(host(model.params["b"]), [0.0])


def test_list_of_triples_and_weight_decay_rules():
    w = numpy.array([[2.0]])
    b = numpy.array([2.0])
    dw = numpy.zeros_like(w)
    db = numpy.zeros_like(b)
    opt = optim.SGD([("w", w, dw), ("b", b, db)], lr=0.1, momentum=0.0, weight_decay=0.5)
    opt.step()
    # L2: dw_eff = 0 + 0.5 * 2 = 1 -> w = 2 - 0.1; biases are not decayed
    numpy.testing.assert_allclose(w, [[1.9]])
    numpy.testing.assert_allclose(b, [2.0])
    assert dw[0, 0] == 0  # the stored gradient is not modified
    # decoupled (AdamW): w -= lr * wd * w before the Adam step (which is 0 for a 0 gradient)
    w2 = numpy.array([[2.0]])
    adamw = optim.Adam([("w", w2, numpy.zeros_like(w2))], lr=0.1, weight_decay=0.5,
                       decoupled_weight_decay=True)
    adamw.step()
    numpy.testing.assert_allclose(w2, [[2.0 - 0.1 * 0.5 * 2.0]])
    with pytest.raises(TypeError, match="named_parameters|triples"):
        optim.SGD([w, dw], lr=0.1)


@pytest.mark.parametrize("factory", [lambda p, **kw: optim.SGD(p, lr=0.1, momentum=0, **kw),
                                     lambda p, **kw: optim.RMSprop(p, lr=0.1, **kw),
                                     lambda p, **kw: optim.Adam(p, lr=0.1, **kw)])
def test_lr_scales_give_each_part_its_own_rate(factory):
    """A parameter under a prefix of lr_scales moves by lr * scale (the longest prefix decides),
    as if the optimizer had been built with that rate; the others take lr."""
    names = ["decoder.w", "encoder.a.w", "encoder.head.w", "encoderx.w"]
    rng = numpy.random.default_rng(0)
    start = {name: rng.standard_normal(3) for name in names}
    grads = {name: rng.standard_normal(3) for name in names}
    triples = [(name, start[name].copy(), grads[name]) for name in names]
    scaled = factory(triples, lr_scales={"encoder": 0.1, "encoder.head": 0.5})
    scaled.step()
    expected_lr = {"decoder.w": 0.1, "encoder.a.w": 0.01, "encoder.head.w": 0.05, "encoderx.w": 0.1}
    for name, param, _ in triples:
        assert scaled.lr_of(name) == pytest.approx(expected_lr[name])
        reference = factory([(name, start[name].copy(), grads[name])])
        reference.lr = expected_lr[name]
        reference_param = reference.params[0][1]
        reference.step()
        numpy.testing.assert_allclose(param, reference_param, rtol=1e-12)
    with pytest.raises(ValueError, match="lr_scales"):
        factory(triples, lr_scales={"encoder": 0.0})


def test_step_rejects_grad_of_wrong_shape():
    w = numpy.zeros((2, 3))
    opt = optim.Adam([("layer.w", w, numpy.zeros((3, 2)))])
    with pytest.raises(ValueError, match=r"layer\.w.*\(3, 2\).*\(2, 3\)"):
        opt.step()


# ---------------------------------------------------------------- state dicts

def _run(opt_factory, model, xp, steps, seed):
    gen = numpy.random.default_rng(seed)
    opt = opt_factory(model)
    for _ in range(steps):
        model.set_grads(xp, gen.standard_normal((2, 2)), gen.standard_normal(2))
        opt.step()
    return opt


@pytest.mark.parametrize("factory", [
    lambda m: optim.Adam(m, lr=0.01, weight_decay=0.1),
    lambda m: optim.SGD(m, lr=0.01, momentum=0.8),
    lambda m: optim.RMSprop(m, lr=0.01),
], ids=["adam", "sgd", "rmsprop"])
def test_state_dict_round_trip_gives_exact_resume(xp, factory):
    w0, b0 = numpy.ones((2, 2)), numpy.zeros(2)
    full = TwoParams(xp, w0, b0)
    _run(factory, full, xp, 6, seed=3)

    part = TwoParams(xp, w0, b0)
    gen = numpy.random.default_rng(3)
    opt = factory(part)
    for _ in range(3):
        part.set_grads(xp, gen.standard_normal((2, 2)), gen.standard_normal(2))
        opt.step()
    state = {k: backend.to_numpy(v) for k, v in opt.state_dict().items()}  # as if saved
    resumed_model = TwoParams(xp, backend.to_numpy(part.params["w"]), backend.to_numpy(part.params["b"]))
    resumed = factory(resumed_model)
    resumed.lr = 123.0  # overwritten by the load
    resumed.load_state_dict(state)
    assert resumed.t == 3 and resumed.lr == 0.01
    for _ in range(3):
        resumed_model.set_grads(xp, gen.standard_normal((2, 2)), gen.standard_normal(2))
        resumed.step()
    numpy.testing.assert_array_equal(host(resumed_model.params["w"]), host(full.params["w"]))
    numpy.testing.assert_array_equal(host(resumed_model.params["b"]), host(full.params["b"]))


def test_sgd_state_brings_its_momentum():
    w, g = numpy.ones(3), numpy.ones(3)
    with_momentum = optim.SGD([("w", w.copy(), g)], lr=0.1, momentum=0.9)
    with_momentum.step()
    plain = optim.SGD([("w", w.copy(), g)], lr=0.1, momentum=0.0)
    plain.load_state_dict(with_momentum.state_dict())     # velocity buffers included
    assert plain.momentum == 0.9
    numpy.testing.assert_array_equal(plain.state["velocity"]["w"], with_momentum.state["velocity"]["w"])
    back = optim.SGD([("w", w.copy(), g)], lr=0.1, momentum=0.9)
    back.load_state_dict(optim.SGD([("w", w.copy(), g)], lr=0.1, momentum=0.0).state_dict())
    assert back.momentum == 0.0


def test_load_state_dict_names_the_bad_entries():
    model = TwoParams(numpy, numpy.ones((2, 2)), numpy.zeros(2))
    opt = optim.Adam(model)
    model.set_grads(numpy, numpy.ones((2, 2)), numpy.ones(2))
    opt.step()
    state = opt.state_dict()
    bad = dict(state)
    del bad["t"]
    bad["m/w"] = numpy.zeros((3, 2))
    bad["m/decoder.gone"] = numpy.zeros(2)
    fresh = optim.Adam(model)
    with pytest.raises(ValueError) as info:
        fresh.load_state_dict(bad)
    message = str(info.value)
    assert "missing: t" in message
    assert "m/decoder.gone" in message
    assert "m/w: saved (3, 2), parameter (2, 2)" in message
    assert fresh.t == 0 and fresh.state["m"] == {}  # nothing changed


# ---------------------------------------------------------------- clipping

def test_clip_grad_norm_scales_globally():
    a = numpy.array([3.0])
    b = numpy.array([[4.0, 0.0]])
    total = optim.clip_grad_norm([a, b], max_norm=1.0)
    assert total == pytest.approx(5.0)
    numpy.testing.assert_allclose(a, [0.6])
    numpy.testing.assert_allclose(b, [[0.8, 0.0]])
    # below the limit: nothing changes, norm still returned
    total = optim.clip_grad_norm({"a": a, "b": b}, max_norm=10.0)
    assert total == pytest.approx(1.0)
    numpy.testing.assert_allclose(a, [0.6])
    with pytest.raises(ValueError, match="max_norm"):
        optim.clip_grad_norm([a], 0)


def test_clip_grad_norm_of_huge_float32_gradients_is_finite(xp):
    # 3e19 squared overflows float32: the norm must still be 5e19, not inf (= "diverged").
    g = as_xp(xp, numpy.array([3e19, 4e19]), numpy.float32)
    total = optim.clip_grad_norm([g], max_norm=1.0)
    assert total == pytest.approx(5e19, rel=1e-6)
    numpy.testing.assert_allclose(host(g), [0.6, 0.8], rtol=1e-6)
    assert g.dtype == numpy.float32


def test_clip_grad_norm_on_a_module(xp):
    model = TwoParams(xp, numpy.zeros((2, 2)), numpy.zeros(2))
    model.set_grads(xp, [[1.0, 1.0], [1.0, 1.0]], [1.0, 1.0])  # norm sqrt(6)
    total = optim.clip_grad_norm(model, max_norm=math.sqrt(6) / 2)
    assert total == pytest.approx(math.sqrt(6))
    numpy.testing.assert_allclose(host(model.grads["w"]), numpy.full((2, 2), 0.5))
    numpy.testing.assert_allclose(host(model.grads["b"]), [0.5, 0.5])
    nan = TwoParams(xp, numpy.zeros((2, 2)), numpy.zeros(2))
    nan.set_grads(xp, [[numpy.nan, 0], [0, 0]], [0, 0])
    assert math.isnan(optim.clip_grad_norm(nan, 1.0))


# ---------------------------------------------------------------- schedules

def test_step_decay():
    opt = optim.SGD([("w", numpy.zeros(1), numpy.zeros(1))], lr=1.0)
    schedule = optim.StepDecay(opt, step_size=2, gamma=0.1)
    rates = [schedule.step() for _ in range(5)]
    numpy.testing.assert_allclose(rates, [1.0, 0.1, 0.1, 0.01, 0.01])
    resumed = optim.StepDecay(opt, step_size=2, gamma=0.1)
    resumed.load_state_dict(schedule.state_dict())
    assert resumed.step() == pytest.approx(0.001)


def test_reduce_on_plateau_max_mode_for_bleu():
    opt = optim.Adam([("w", numpy.zeros(1), numpy.zeros(1))], lr=1.0)
    schedule = optim.ReduceOnPlateau(opt, factor=0.5, patience=1, mode="max", min_lr=0.2)
    reduced = [schedule.step(v) for v in (0.10, 0.12, 0.11, 0.12, 0.13, 0.13, 0.12, 0.1, 0.1, 0.1)]
    # 0.11: 1 bad (patience 1, no cut); 0.12 (not > best 0.12): 2nd bad -> cut to 0.5;
    # 0.13 better; 0.13, 0.12: 2 bad -> 0.25; 0.1, 0.1: 2 bad -> max(0.125, 0.2) = 0.2
    assert reduced == [False, False, False, True, False, False, True, False, True, False]
    assert opt.lr == pytest.approx(0.2)
    assert schedule.best == pytest.approx(0.13)
    again = optim.ReduceOnPlateau(opt, patience=1)
    again.load_state_dict(schedule.state_dict())
    assert again.best == pytest.approx(0.13) and again.bad_epochs == schedule.bad_epochs
    with pytest.raises(ValueError, match="mode"):
        optim.ReduceOnPlateau(opt, mode="up")


def test_reduce_on_plateau_min_mode():
    opt = optim.SGD([("w", numpy.zeros(1), numpy.zeros(1))], lr=1.0)
    schedule = optim.ReduceOnPlateau(opt, factor=0.1, patience=0, mode="min")
    assert [schedule.step(v) for v in (3.0, 2.0, 2.5)] == [False, False, True]
    assert opt.lr == pytest.approx(0.1)
