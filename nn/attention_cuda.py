"""The elementwise work of one soft-attention step as fused CUDA kernels on CuPy.

A decoder attends once per time step, and at caption sizes (N = 64 images,
L = 49 locations, A = 256 units) each of `nn.attention`'s small array
operations is a GPU kernel launch that costs more than its arithmetic. The
plain step launches about a dozen of them besides its matrix products; here
the same formulas take four kernels, two forward and two backward (and the
gate below one each way):

forward, given projected (N, L, A) and hidden = h W_hidden (N, A):
    activations[n, l, a] = tanh(projected[n, l, a] + hidden[n, a])       one pass (plain path: add, tanh)
    scores = activations @ w_score                                       (cuBLAS, unchanged)
    alpha[n, l] = exp(scores[n, l] - m_n) / sum_k exp(scores[n, k] - m_n),  m_n = max_k scores[n, k]
                                                 one thread per row n (plain: max, subtract, exp, sum, divide)
backward, given dalpha_total = features dcontext (+ dalpha) (N, L):
    dscores[n, l] = alpha[n, l] * (dalpha_total[n, l] - sum_k alpha[n, k] dalpha_total[n, k])
                                                 one thread per row n (plain: add, multiply, sum, subtract, multiply)
    dprojected[n, l, a] = (1 - activations[n, l, a]^2) * dscores[n, l] * w_score[a]
                                                 one pass (plain: multiply, subtract, multiply, multiply)
The matrix products (h W_hidden, the scores, the context, dw_score, dh,
dW_hidden) stay as they are. A row of L = 49 is short work for one thread,
and N rows are few threads, but one launch instead of five is what counts here.

Show, Attend and Tell's gate on the context (`nn.attention.attention_gate_*`),
given gate_pre = h W_beta (N, 1), b_beta (1,), context (N, D):
    beta[n] = sigmoid(gate_pre[n] + b_beta) = 1 / (1 + e^-x), as e^x / (1 + e^x) for x < 0
    gated[n, d] = beta[n] * context[n, d]          one pass (plain: add, the 9 array ops of the
                                                   stable sigmoid, multiply); thread (n, 0) writes beta[n]
backward, given dgated (N, D) and s[n] = sum_d dgated[n, d] context[n, d] (CuPy, 2 kernels):
    dcontext[n, d] = dgated[n, d] * beta[n]
    dgate_pre[n] = s[n] * beta[n] * (1 - beta[n])  one pass (plain: 4 array ops); thread (n, 0) writes it

OFF BY DEFAULT: this code has not yet run on a GPU (issue 17). `nn.attention`
uses it only when `nn.backend.use_gpu_kernels(True)` (or NN_GPU_KERNELS=1) and
the arrays are CuPy float32/float64. The kernels are module data,
`nn.backend.KernelSpec`s that `backend.elementwise_kernel` builds into CuPy
kernels: tests/test_nn_attention_cuda_on_cpu.py runs the same C++ on the CPU
(tests/cuda_on_cpu.py) against the plain NumPy formulas and compiles it with
nvcc; tests/test_nn_attention_cuda.py compares the kernels with the plain path
on CuPy (skipped without a GPU).
"""
import numpy

from . import backend
from .backend import KernelSpec

__all__ = ["applies", "tanh_add", "softmax_rows", "softmax_backward_rows", "dprojected",
           "gate_forward", "gate_backward",
           "TANH_ADD_KERNEL", "SOFTMAX_ROWS_KERNEL", "SOFTMAX_BACKWARD_ROWS_KERNEL", "DPROJECTED_KERNEL",
           "GATE_FORWARD_KERNEL", "GATE_BACKWARD_KERNEL"]

# The kernels, built by backend.elementwise_kernel (and run on the CPU by the tests' harness).
# Non-raw arrays are broadcast together and read at index i (one thread per output element);
# the row kernels take raw (N, L) arrays, one thread per row, launched with size=N.
TANH_ADD_KERNEL = KernelSpec(
    in_params="T projected, T hidden", out_params="T activations",
    operation="activations = tanh(projected + hidden);",
    name="nn_attention_tanh_add")

SOFTMAX_ROWS_KERNEL = KernelSpec(
    in_params="raw T scores, int64 L", out_params="raw T alpha",
    operation="""
    const ptrdiff_t row = i * L;
    T top = scores[row];                                   // the row's largest score: exp never overflows
    for (ptrdiff_t l = 1; l < L; ++l) top = scores[row + l] > top ? scores[row + l] : top;
    T total = 0;
    for (ptrdiff_t l = 0; l < L; ++l) {
        const T e = exp(scores[row + l] - top);
        alpha[row + l] = e;
        total += e;
    }
    for (ptrdiff_t l = 0; l < L; ++l) alpha[row + l] /= total;
""",
    name="nn_attention_softmax_rows")

SOFTMAX_BACKWARD_ROWS_KERNEL = KernelSpec(
    in_params="raw T alpha, raw T dalpha_context, raw T dalpha, bool has_dalpha, int64 L",
    out_params="raw T dscores",
    operation="""
    const ptrdiff_t row = i * L;
    T weighted = 0;                                        // sum_l alpha_l dalpha_total_l
    for (ptrdiff_t l = 0; l < L; ++l) {
        const T d = has_dalpha ? dalpha_context[row + l] + dalpha[row + l] : dalpha_context[row + l];
        dscores[row + l] = d;
        weighted += alpha[row + l] * d;
    }
    for (ptrdiff_t l = 0; l < L; ++l) dscores[row + l] = (dscores[row + l] - weighted) * alpha[row + l];
""",
    name="nn_attention_softmax_backward_rows")

DPROJECTED_KERNEL = KernelSpec(
    in_params="T activations, T dscores, T w_score", out_params="T dprojected",
    operation="dprojected = (1 - activations * activations) * dscores * w_score;",
    name="nn_attention_dprojected")

# One thread per (n, d) of the (N, D) context; the (N, 1) gate values are read broadcast and
# written (raw) by the thread with d = 0 of each row.
GATE_FORWARD_KERNEL = KernelSpec(
    in_params="T gate_pre, T b_beta, T context, int64 D", out_params="T gated, raw T beta",
    operation="""
    const T x = gate_pre + b_beta;
    const T z = exp(-fabs(x));                            // <= 1: never overflows
    const T b = x >= 0 ? 1 / (1 + z) : z / (1 + z);
    gated = b * context;
    if (i % D == 0) beta[i / D] = b;
""",
    name="nn_attention_gate_forward")

GATE_BACKWARD_KERNEL = KernelSpec(
    in_params="T dgated, T beta, T dbeta, int64 D", out_params="T dcontext, raw T dgate_pre",
    operation="""
    dcontext = dgated * beta;
    if (i % D == 0) dgate_pre[i / D] = dbeta * beta * (1 - beta);
""",
    name="nn_attention_gate_backward")

def applies(xp, x):
    """Use the kernels for these arrays? Only when switched on and for CuPy float32/float64 arrays."""
    return (xp is not numpy and backend.gpu_kernels_enabled()
            and numpy.dtype(x.dtype) in (numpy.dtype(numpy.float32), numpy.dtype(numpy.float64)))


def tanh_add(projected, hidden):
    """activations (N, L, A) = tanh(projected (N, L, A) + hidden (N, A) broadcast over L)."""
    return backend.elementwise_kernel(TANH_ADD_KERNEL)(projected, hidden[:, None, :])


def softmax_rows(xp, scores):
    """alpha (N, L): the softmax of each row of scores (N, L)."""
    scores = xp.ascontiguousarray(scores)
    N, L = scores.shape
    alpha = xp.empty_like(scores)
    backend.elementwise_kernel(SOFTMAX_ROWS_KERNEL)(scores, L, alpha, size=N)
    return alpha


def softmax_backward_rows(xp, alpha, dalpha_context, dalpha):
    """dscores (N, L) of alpha = softmax(scores), from dalpha_total = dalpha_context + dalpha.

    dalpha_context: the gradient reaching alpha through the context (N, L);
    dalpha: the gradient reaching alpha directly (N, L), or None.
    """
    N, L = alpha.shape
    dscores = xp.empty_like(alpha)
    kernel = backend.elementwise_kernel(SOFTMAX_BACKWARD_ROWS_KERNEL)
    kernel(alpha, dalpha_context, alpha if dalpha is None else dalpha, dalpha is not None, L, dscores, size=N)
    return dscores


def dprojected(activations, dscores, w_score):
    """d loss / d projected (N, L, A) = (1 - activations^2) * dscores (N, L) broadcast over A * w_score (A,)."""
    return backend.elementwise_kernel(DPROJECTED_KERNEL)(activations, dscores[:, :, None], w_score)


def gate_forward(xp, gate_pre, b_beta, context, out=None):
    """(gated (N, D), beta (N, 1)): beta = sigmoid(gate_pre (N, 1) + b_beta (1,)), gated = beta * context.

    out: an optional C-contiguous (N, D) array that receives gated.
    """
    N, D = context.shape
    beta = xp.empty((N, 1), dtype=context.dtype)
    gated = xp.empty((N, D), dtype=context.dtype) if out is None else out
    backend.elementwise_kernel(GATE_FORWARD_KERNEL)(gate_pre, b_beta, context, D, gated, beta)
    return gated, beta


def gate_backward(xp, dgated, context, beta):
    """(dcontext (N, D), dgate_pre (N, 1)) of `gate_forward`, from dgated (N, D)."""
    N, D = dgated.shape
    dbeta = (dgated * context).sum(axis=1, keepdims=True)          # d loss / d beta, (N, 1)
    dcontext = xp.empty_like(dgated)
    dgate_pre = xp.empty((N, 1), dtype=dgated.dtype)
    backend.elementwise_kernel(GATE_BACKWARD_KERNEL)(dgated, beta, dbeta, D, dcontext, dgate_pre)
    return dcontext, dgate_pre
