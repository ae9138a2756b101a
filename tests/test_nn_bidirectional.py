"""The bidirectional ReLU RNN (nn.bidirectional): values by hand, padding, float64 gradients."""
import numpy
import pytest

from nn import bidirectional
from nn.gradcheck import eval_numerical_gradient_array, rel_error
from tests.conftest import as_xp


def make_inputs(xp, seed, N=3, T=5, H=4):
    gen = numpy.random.default_rng(seed)
    p = dict(x=as_xp(xp, gen.standard_normal((N, T, H))),
             mask=as_xp(xp, (numpy.arange(T)[None] < numpy.array([T, 3, 1])[:N, None]).astype(float)),
             Wf=as_xp(xp, gen.standard_normal((H, H)) * 0.5), bf=as_xp(xp, gen.standard_normal(H) * 0.5),
             Wb=as_xp(xp, gen.standard_normal((H, H)) * 0.5), bb=as_xp(xp, gen.standard_normal(H) * 0.5))
    return gen, p


def loop_reference(x, mask, Wf, bf, Wb, bb):
    x, mask, Wf, bf, Wb, bb = (numpy.asarray(a.get() if hasattr(a, "get") else a)
                               for a in (x, mask, Wf, bf, Wb, bb))
    N, T, H = x.shape
    hf, hb = numpy.zeros_like(x), numpy.zeros_like(x)
    for n in range(N):
        length = int(mask[n].sum())
        prev = numpy.zeros(H)
        for t in range(length):
            prev = hf[n, t] = numpy.maximum(0, x[n, t] + prev @ Wf + bf)
        prev = numpy.zeros(H)
        for t in reversed(range(length)):
            prev = hb[n, t] = numpy.maximum(0, x[n, t] + prev @ Wb + bb)
    return hf, hb


def test_equals_a_loop_over_each_sentence(xp):
    _, p = make_inputs(xp, 0)
    hf, hb, _ = bidirectional.birnn_relu_forward(**p)
    ref_f, ref_b = loop_reference(**p)
    assert rel_error(hf, ref_f) < 1e-14 and rel_error(hb, ref_b) < 1e-14


def test_backward_pass_starts_at_the_last_real_word(xp):
    # Sentence 1 has 3 words: its right-to-left state at word 2 ignores the padding.
    _, p = make_inputs(xp, 1)
    _, hb, _ = bidirectional.birnn_relu_forward(**p)
    expected = numpy.maximum(0, numpy.asarray(backend_numpy(p["x"][1, 2] + p["bb"])))
    assert rel_error(hb[1, 2], expected) < 1e-15
    assert float(abs(hb[1, 3:]).sum()) == 0.0


def backend_numpy(a):
    return a.get() if hasattr(a, "get") else a


@pytest.mark.parametrize("seed", [2, 3])
def test_gradients(xp, seed):
    gen, p = make_inputs(xp, seed)
    hf, hb, cache = bidirectional.birnn_relu_forward(**p)
    dhf = as_xp(xp, gen.standard_normal(hf.shape))
    dhb = as_xp(xp, gen.standard_normal(hb.shape))
    names = ["x", "Wf", "bf", "Wb", "bb"]
    analytic = dict(zip(names, bidirectional.birnn_relu_backward(dhf, dhb, cache)))
    dout = xp.concatenate([dhf, dhb], axis=1)

    def forward():
        hf, hb, _ = bidirectional.birnn_relu_forward(**p)
        return xp.concatenate([hf, hb], axis=1)
    for name in names:
        numeric = eval_numerical_gradient_array(lambda _: forward(), p[name], dout)
        err = rel_error(analytic[name], numeric)
        assert err < 1e-7, f"d{name}: {err:.2e}"


def test_bad_shapes(xp):
    _, p = make_inputs(xp, 4)
    p["Wf"] = p["Wf"][:2]
    with pytest.raises(ValueError, match="Wf"):
        bidirectional.birnn_relu_forward(**p)
