"""Convolution: hand-computed values, fast == naive, gradient checks for every option, bad input."""
import numpy
import pytest

from conftest import as_xp
from nn import backend
from nn import conv
from nn.conv import conv_backward, conv_backward_naive, conv_forward, conv_forward_naive, same_padding
from nn.gradcheck import eval_numerical_gradient_array, rel_error

TOL = 1e-7

# (N, C, H, W, F, kernel, stride, pad, groups, bias): covers stride 1/2/3, int and
# asymmetric pad, groups 1/2/depthwise (and depthwise with 2 filters per channel,
# which takes a matrix-product path), kernels 1 (with and without pad)/3/5/3x1/1x3,
# leftover rows a stride skips, no bias. Each path of conv_forward is hit:
# shifted products (stride 1), im2col (stride > 1), depthwise (stride 1, 2, 3).
CONFIGS = [
    (2, 3, 5, 5, 4, 3, 1, 1, 1, True),
    (2, 3, 6, 5, 2, 3, 2, (0, 1, 0, 1), 1, True),
    (2, 4, 5, 4, 6, 3, 1, 1, 2, True),
    (2, 4, 6, 6, 4, 3, 2, (0, 1, 0, 1), 4, True),
    (2, 3, 5, 5, 3, 5, 1, 2, 3, False),
    (1, 3, 7, 6, 3, 5, 2, (1, 2, 1, 2), 3, True),
    (2, 3, 4, 4, 5, 1, 1, 0, 1, True),
    (2, 4, 5, 5, 6, 1, 2, 0, 2, False),
    (2, 2, 6, 7, 4, 3, 2, 0, 2, True),
    (1, 2, 5, 5, 4, 3, 1, (1, 0, 2, 1), 2, True),
    (2, 2, 3, 4, 3, 1, 1, 1, 1, True),
    (1, 2, 8, 7, 2, 3, 3, 1, 2, True),
    (2, 3, 6, 6, 3, 3, 2, 1, 3, False),
    (2, 3, 5, 4, 4, (3, 1), 1, 0, 1, True),
    (2, 2, 4, 5, 3, (1, 3), 1, (0, 0, 1, 1), 1, False),
]
IDS = [f"k{c[5]}-s{c[6]}-pad{c[7]}-g{c[8]}{'' if c[9] else '-nobias'}".replace(" ", "")
       for c in CONFIGS]


def make(xp, config, seed=0, dtype=numpy.float64):
    n, c, h, w, f, k, stride, pad, groups, bias = config
    gen = numpy.random.default_rng(seed)

    def normal(shape):   # no value near zero: a near-zero weight makes near-zero gradients
        z = gen.standard_normal(shape)
        return z + 0.1 * numpy.sign(z)

    x = as_xp(xp, normal((n, c, h, w)), dtype)
    kh, kw = (k, k) if isinstance(k, int) else k
    weight = as_xp(xp, normal((f, c // groups, kh, kw)), dtype)
    b = as_xp(xp, normal(f), dtype) if bias else None
    return x, weight, b, {"stride": stride, "pad": pad, "groups": groups}


def test_conv_hand_computed(xp):
    x = as_xp(xp, numpy.arange(1.0, 10.0).reshape(1, 1, 3, 3))   # [[1,2,3],[4,5,6],[7,8,9]]
    w = as_xp(xp, [[[[1.0, 2.0], [0.0, -1.0]]]])
    b = as_xp(xp, [1.0])
    out, _ = conv_forward(x, w, b, {"stride": 1, "pad": 0})
    # out[i, j] = x[i, j] + 2 x[i, j+1] - x[i+1, j+1] + 1
    assert numpy.allclose(backend.to_numpy(out), [[[[1.0, 3.0], [7.0, 9.0]]]])
    # stride 2, one zero row/column padded at the bottom/right only (TF "same")
    out, _ = conv_forward(x, w, b, {"stride": 2, "pad": (0, 1, 0, 1)})
    assert numpy.allclose(backend.to_numpy(out), [[[[1.0, 4.0], [24.0, 10.0]]]])


def test_depthwise_hand_computed(xp):
    # Each channel has its own kernel: channel 0 sums its 2x2 windows, channel 1 takes -top-left.
    x = as_xp(xp, numpy.stack([numpy.arange(9.0).reshape(3, 3), numpy.ones((3, 3))])[None])
    w = as_xp(xp, [[[[1.0, 1.0], [1.0, 1.0]]], [[[-1.0, 0.0], [0.0, 0.0]]]])
    out, _ = conv_forward(x, w, None, {"groups": 2})
    assert numpy.allclose(backend.to_numpy(out), [[[[8.0, 12.0], [20.0, 24.0]], [[-1.0, -1.0], [-1.0, -1.0]]]])


@pytest.mark.parametrize("in_size, kernel, stride, expected", [
    (224, 3, 2, (0, 1)), (224, 5, 1, (2, 2)), (112, 5, 2, (1, 2)), (7, 3, 1, (1, 1)),
    (5, 1, 2, (0, 0)), (14, 3, 2, (0, 1)), (15, 3, 2, (1, 1)),
])
def test_same_padding_matches_tensorflow(in_size, kernel, stride, expected):
    assert same_padding(in_size, kernel, stride) == expected
    before, after = same_padding(in_size, kernel, stride)
    # TF "same": the output has ceil(in / stride) positions
    assert (in_size + before + after - kernel) // stride + 1 == -(-in_size // stride)


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_conv_fast_equals_naive(xp, config):
    x, w, b, param = make(xp, config)
    fast, _ = conv_forward(x, w, b, param)
    naive, _ = conv_forward_naive(x, w, b, param)
    assert fast.shape == naive.shape
    assert rel_error(fast, naive) < 1e-12


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_conv_gradients(xp, config):
    x, w, b, param = make(xp, config, seed=1)
    out, cache = conv_forward(x, w, b, param)
    # An upstream gradient under which no gradient entry is nearly zero (exact
    # zeros, e.g. pixels a stride skips, are fine): the elementwise relative
    # error of a near-zero entry measures only finite-difference noise.
    for seed in range(2, 100):
        dout = as_xp(xp, numpy.random.default_rng(seed).standard_normal(out.shape))
        dx, dw, db = conv_backward(dout, cache)
        magnitudes = numpy.abs(numpy.concatenate([backend.to_numpy(dx).ravel(), backend.to_numpy(dw).ravel()]))
        if magnitudes[magnitudes > 0].min() > 1e-3:
            break
    assert dx.shape == x.shape and dw.shape == w.shape
    assert rel_error(dx, eval_numerical_gradient_array(lambda v: conv_forward(v, w, b, param)[0], x, dout)) < TOL
    assert rel_error(dw, eval_numerical_gradient_array(lambda v: conv_forward(x, v, b, param)[0], w, dout)) < TOL
    if b is None:
        assert db is None
    else:
        assert rel_error(db, eval_numerical_gradient_array(lambda v: conv_forward(x, w, v, param)[0], b, dout)) < TOL


DEPTHWISE = [c for c in CONFIGS if c[8] == c[1] == c[4]]
DEPTHWISE_IDS = [i for c, i in zip(CONFIGS, IDS) if c in DEPTHWISE]


@pytest.mark.parametrize("config", DEPTHWISE, ids=DEPTHWISE_IDS)
@pytest.mark.parametrize("small_map_pixels", [0, 10 ** 9], ids=["flat-rows", "batch-last"])
def test_depthwise_layouts_equal_naive(xp, monkeypatch, config, small_map_pixels):
    x, w, b, param = make(xp, config, seed=8)
    monkeypatch.setattr(conv, "SMALL_MAP_PIXELS", small_map_pixels)
    out, _ = conv_forward(x, w, b, param)
    assert rel_error(out, conv_forward_naive(x, w, b, param)[0]) < 1e-12


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
@pytest.mark.parametrize("small_map_pixels", [0, 10 ** 9], ids=["flat-rows", "batch-last"])
def test_conv_blocked_and_threaded_numpy_paths_agree(monkeypatch, config, small_map_pixels):
    monkeypatch.setattr(conv, "SMALL_MAP_PIXELS", small_map_pixels)
    x, w, b, param = make(numpy, config, seed=6)
    expected, _ = conv_forward_naive(x, w, b, param)
    out, cache = conv_forward(x, w, b, param)
    dout = numpy.random.default_rng(7).standard_normal(out.shape)
    grads = conv_backward(dout, cache)
    # Tiny work sizes: one image per chunk, one row per block, on several threads.
    monkeypatch.setattr(conv, "CHUNK_BYTES", 1)
    monkeypatch.setattr(conv, "BLOCK_BYTES", 1)
    monkeypatch.setattr(conv, "PARALLEL_BYTES", 0)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    blocked, cache = conv_forward(x, w, b, param)
    assert rel_error(blocked, expected) < 1e-12
    for got, want in zip(conv_backward(dout, cache), grads):
        assert (got is None and want is None) or rel_error(got, want) < 1e-12


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_conv_empty_batch(xp, config):
    x, w, b, param = make(xp, config)
    out, cache = conv_forward(x[:0], w, b, param)
    assert out.shape == (0,) + conv_forward_naive(x, w, b, param)[0].shape[1:]
    dx, dw, db = conv_backward(out, cache)
    assert dx.shape == x[:0].shape and dw.shape == w.shape
    assert not bool(dw.any()) and (db is None or not bool(db.any()))


@pytest.mark.parametrize("config", [CONFIGS[1], CONFIGS[3], CONFIGS[4], CONFIGS[9]],
                         ids=[IDS[1], IDS[3], IDS[4], IDS[9]])
def test_conv_backward_naive_matches_finite_differences_and_the_fast_backward(xp, config):
    """float64: the loop backward against finite differences of the loop forward, and equal to conv_backward."""
    x, w, b, param = make(xp, config, seed=2)
    out, cache = conv_forward_naive(x, w, b, param)
    dout = as_xp(xp, numpy.random.default_rng(4).standard_normal(out.shape))
    grads = conv_backward_naive(dout, cache)
    inputs = [x, w, b]
    for k, grad in enumerate(grads):
        if inputs[k] is None:
            assert grad is None
            continue

        def forward(value, k=k):
            return conv_forward_naive(*(inputs[:k] + [value] + inputs[k + 1:]), param)[0]
        assert rel_error(grad, eval_numerical_gradient_array(forward, inputs[k], dout)) < TOL
    for got, want in zip(grads, conv_backward(dout, conv_forward(x, w, b, param)[1])):
        assert (got is None and want is None) or rel_error(got, want) < 1e-12
    with pytest.raises(ValueError, match="conv_backward_naive: dout must have shape"):
        conv_backward_naive(dout[:, :1], cache)


def test_conv_backward_accepts_naive_cache(xp):
    x, w, b, param = make(xp, CONFIGS[3])
    out, naive_cache = conv_forward_naive(x, w, b, param)
    _, fast_cache = conv_forward(x, w, b, param)
    dout = as_xp(xp, numpy.random.default_rng(3).standard_normal(out.shape))
    for got, want in zip(conv_backward(dout, naive_cache), conv_backward(dout, fast_cache)):
        assert rel_error(got, want) < 1e-12


@pytest.mark.parametrize("config", [CONFIGS[0], CONFIGS[1], CONFIGS[3], CONFIGS[5], CONFIGS[6]],
                         ids=[IDS[0], IDS[1], IDS[3], IDS[5], IDS[6]])
def test_conv_keeps_float32(xp, config):
    x, w, b, param = make(xp, config, dtype=numpy.float32)
    out, cache = conv_forward(x, w, b, param)
    assert out.dtype == numpy.float32
    dx, dw, db = conv_backward(out, cache)
    assert dx.dtype == dw.dtype == db.dtype == numpy.float32
    reference, _ = conv_forward_naive(x.astype(numpy.float64), w.astype(numpy.float64),
                                      b.astype(numpy.float64), param)
    assert rel_error(out, reference) < 1e-4


def test_conv_matches_torch(xp):
    torch = pytest.importorskip("torch", reason="optional oracle: PyTorch not installed")
    functional = torch.nn.functional
    for config in CONFIGS:
        x, w, b, param = make(xp, config, seed=4)
        out, cache = conv_forward(x, w, b, param)
        dout = numpy.random.default_rng(5).standard_normal(out.shape)
        dx, dw, db = conv_backward(as_xp(xp, dout), cache)
        pad = param["pad"] if isinstance(param["pad"], tuple) else (param["pad"],) * 4
        xt = torch.tensor(backend.to_numpy(x), requires_grad=True)
        wt = torch.tensor(backend.to_numpy(w), requires_grad=True)
        bt = None if b is None else torch.tensor(backend.to_numpy(b), requires_grad=True)
        padded = functional.pad(xt, (pad[2], pad[3], pad[0], pad[1]))   # (left, right, top, bottom)
        ref = functional.conv2d(padded, wt, bt, stride=param["stride"], groups=param["groups"])
        ref.backward(torch.tensor(dout))
        assert numpy.allclose(backend.to_numpy(out), ref.detach().numpy(), atol=1e-12)
        assert numpy.allclose(backend.to_numpy(dx), xt.grad.numpy(), atol=1e-12)
        assert numpy.allclose(backend.to_numpy(dw), wt.grad.numpy(), atol=1e-12)
        if b is not None:
            assert numpy.allclose(backend.to_numpy(db), bt.grad.numpy(), atol=1e-12)


@pytest.mark.parametrize("x_shape, w_shape, param, error, message", [
    ((2, 3, 5, 5), (4, 3, 3, 3), {"groups": 2}, ValueError, r"groups=2 must divide .* C=3"),
    ((2, 4, 5, 5), (4, 4, 3, 3), {"groups": 2}, ValueError, r"w must have shape .*\(4, 2, HH, WW\).* got \(4, 4, 3, 3\)"),
    ((2, 3, 5, 5), (4, 2, 3, 3), {}, ValueError, r"\(4, 3, HH, WW\)"),
    ((2, 3, 5, 5), (4, 3, 3, 3), {"pad": (1, 1)}, ValueError, r"pad must be an int or a \(top, bottom, left, right\)"),
    ((2, 3, 5, 5), (4, 3, 3, 3), {"pad": -1}, ValueError, "non-negative"),
    ((2, 3, 2, 5), (4, 3, 3, 3), {}, ValueError, r"3x3 kernel does not fit the padded input 2x5"),
    ((2, 3, 5, 5), (4, 3, 3, 3), {"stride": 0}, ValueError, "stride must be a positive int"),
    ((3, 5, 5), (4, 3, 3, 3), {}, ValueError, r"x must be 4-D \(N, C, H, W\), got shape \(3, 5, 5\)"),
])
def test_conv_bad_input(xp, x_shape, w_shape, param, error, message):
    x = as_xp(xp, numpy.zeros(x_shape))
    w = as_xp(xp, numpy.zeros(w_shape))
    with pytest.raises(error, match="conv_forward: .*" + message):
        conv_forward(x, w, None, param)


def test_conv_bad_bias_dtype_and_dout(xp):
    x = as_xp(xp, numpy.zeros((1, 2, 4, 4)))
    w = as_xp(xp, numpy.zeros((3, 2, 3, 3)))
    with pytest.raises(ValueError, match=r"conv_forward: b must have shape \(3,\)"):
        conv_forward(x, w, as_xp(xp, numpy.zeros(2)), {})
    with pytest.raises(TypeError, match="conv_forward: inputs must share one dtype"):
        conv_forward(x, w.astype(numpy.float32), None, {})
    _, cache = conv_forward(x, w, None, {})
    with pytest.raises(ValueError, match=r"conv_backward: dout must have shape \(1, 3, 2, 2\)"):
        conv_backward(as_xp(xp, numpy.zeros((1, 3, 4, 4))), cache)


def test_an_unpadded_1x1_conv_is_one_product_on_the_gpu(monkeypatch):
    # Chunks bound the stride-1 path's buffers; an unpadded 1x1 conv has none, so on the GPU (any
    # array module but NumPy: a stand-in here) the whole batch is one chunk however large it is.
    gpu_like = type("GpuLike", (), {"zeros": staticmethod(numpy.zeros), "empty": staticmethod(numpy.empty)})()
    monkeypatch.setattr(conv, "GPU_CHUNK_BYTES", 1024)
    one_by_one = conv._Stride1Columns(gpu_like, (6, 8, 5, 5), (16, 8, 1, 1), (0, 0, 0, 0), 5, numpy.float32)
    assert one_by_one.chunks == [slice(0, 6)]
    three_by_three = conv._Stride1Columns(gpu_like, (6, 8, 5, 5), (16, 8, 3, 3), (1, 1, 1, 1), 5, numpy.float32)
    assert len(three_by_three.chunks) == 6       # its columns buffer is bounded, one image at a time
    on_numpy = conv._Stride1Columns(numpy, (6, 8, 5, 5), (16, 8, 1, 1), (0, 0, 0, 0), 5, numpy.float32)
    monkeypatch.setattr(conv, "CHUNK_BYTES", 1024)
    assert len(conv._Stride1Columns(numpy, (6, 8, 5, 5), (16, 8, 1, 1), (0, 0, 0, 0), 5,
                                    numpy.float32).chunks) == 6   # NumPy keeps its cache-sized chunks
    assert on_numpy.chunks == [slice(0, 6)]


class _RecordsProducts(numpy.ndarray):
    """An array whose matrix products (`@`) record their operands' (bytes, C-contiguous, ndim)."""
    products = []

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        if ufunc is numpy.matmul:
            _RecordsProducts.products.append([(a.nbytes, a.flags.c_contiguous, a.ndim) for a in inputs])
        inputs = [a.view(numpy.ndarray) if isinstance(a, _RecordsProducts) else a for a in inputs]
        return getattr(ufunc, method)(*inputs, **kwargs).view(_RecordsProducts)


@pytest.mark.parametrize("channels_in, channels_out", [(8, 8), (3, 32)])
def test_the_strided_conv_backward_transposes_the_smaller_of_columns_and_dout(channels_in, channels_out):
    # CuPy's batched matmul copies every operand that is not C-contiguous (cupy/_core/
    # _routines_linalg.pyx: ascontiguousarray). dw = sum of dout @ cols^T may be computed as
    # (cols @ dout^T)^T: the columns are hh * ww * C / F times the size of dout (9 for 8 -> 8
    # channels, 27/32 for EfficientNet's 3 -> 32 stem), so the smaller one is transposed.
    gen = numpy.random.default_rng(0)
    x = gen.standard_normal((2, channels_in, 9, 9)).view(_RecordsProducts)
    w = gen.standard_normal((channels_out, channels_in, 3, 3)).view(_RecordsProducts)
    out, cache = conv_forward(x, w, None, {"stride": 2, "pad": 1})
    assert cache[0] == "im2col"
    dout = gen.standard_normal(out.shape).view(_RecordsProducts)
    _RecordsProducts.products = []
    dx, dw, _ = conv_backward(dout, cache)
    dw_product = next(p for p in _RecordsProducts.products if all(ndim == 4 for _, _, ndim in p))
    columns_bytes = dout.nbytes // channels_out * channels_in * 9
    assert sorted(nbytes for nbytes, _, _ in dw_product) == sorted([dout.nbytes, columns_bytes])
    assert [nbytes for nbytes, contiguous, _ in dw_product if not contiguous] == [min(dout.nbytes, columns_bytes)]
    dx_naive, dw_naive, _ = conv_backward_naive(numpy.asarray(dout), conv_forward_naive(
        numpy.asarray(x), numpy.asarray(w), None, {"stride": 2, "pad": 1})[1])
    assert rel_error(dx, dx_naive) < 1e-10 and rel_error(dw, dw_naive) < 1e-10
    assert dw.flags.c_contiguous                                  # laid out like w either way
