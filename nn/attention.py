"""Soft (additive, "Bahdanau") attention, as in Show, Attend and Tell (Xu et al. 2015).

An image is a grid of L feature vectors features[:, l] (e.g. the 7 x 7 = 49
cells of a CNN's last feature map, D = 1280 each). Given the decoder's hidden
state h, every location gets a score

    e_l = w_score . tanh(features_l W_feat + b + h W_hidden)        (A attention units)

the scores become weights alpha = softmax(e) over the L locations, and the
context vector is the weighted mean of the features, context = sum_l alpha_l features_l.

Two ways to call it:
- `attention_forward` / `attention_backward`: the whole op, every parameter's
  gradient returned. Simple; use it for one-off calls and to learn the math.
- For a decoder that attends at every time step over the SAME image:
  `features W_feat + b` does not depend on h, so project it once per image with
  `attention_project_forward`, call `attention_step_forward` at each step with
  that projection, let the caller ADD UP the `dprojected` gradients that
  `attention_step_backward` returns over the steps, and call
  `attention_project_backward` once at the end. For 20 steps over 49 x 1280
  features this saves 19 of 20 large (N*49, 1280) x (1280, A) matrix products
  in the forward pass and again in the backward pass.
`attention_forward` is exactly project + step, so both paths give the same numbers.

`attention_gate_forward` / `attention_gate_backward`: Show, Attend and Tell's
gate beta = sigmoid(h W_beta + b_beta), one number per example, that scales
the context before the decoder reads it (Xu et al., sec. 4.2.1).

On CuPy with `nn.backend.use_gpu_kernels(True)` the step's elementwise work
(and the gate's) runs as fused kernels (nn.attention_cuda: same formulas, off by default);
the code below is the reference they are tested against.
"""
from . import attention_cuda, backend
from .dense import (_check_float, _check_ndim, _check_shape, sigmoid, temporal_affine_backward,
                    temporal_affine_forward)
from .losses import softmax

__all__ = [
    "attention_forward", "attention_backward",
    "attention_project_forward", "attention_project_backward",
    "attention_step_forward", "attention_step_backward",
    "attention_gate_forward", "attention_gate_backward",
]


def attention_project_forward(features, W_feat, b):
    """The part of the attention scores that depends on the image only: features W_feat + b.

    Inputs:
    - features: feature grid, shape (N, L, D)
    - W_feat: feature-to-attention weights, shape (D, A)
    - b: attention biases, shape (A,)
    Returns:
    - projected: (N, L, A)
    - cache: (features, W_feat) for `attention_project_backward`
    """
    op = "attention_project_forward"
    backend.get_array_module(features, W_feat, b, op=op)
    _check_float(op, features=features, W_feat=W_feat, b=b)
    _check_ndim(op, "features", features, 3, "(N, L, D)")
    _check_ndim(op, "W_feat", W_feat, 2, "(D, A)")
    N, L, D = features.shape
    A = W_feat.shape[1]
    _check_shape(op, "W_feat", W_feat, (D, A))
    _check_shape(op, "b", b, (A,))
    # The same map at each of the L locations: a temporal affine over "time" = location.
    return temporal_affine_forward(features, W_feat, b)


def attention_project_backward(dprojected, cache):
    """Backward pass of `attention_project_forward`.

    Inputs:
    - dprojected: gradient of the projection, shape (N, L, A) (for a decoder:
      the sum over time steps of what `attention_step_backward` returned)
    - cache: from the forward pass
    Returns a tuple of:
    - dfeatures: (N, L, D)
    - dW_feat: (D, A)
    - db: (A,)
    """
    return temporal_affine_backward(dprojected, cache)


def attention_step_forward(features, projected, h, W_hidden, w_score):
    """Attention weights and context vector for one hidden state, given the projected features.

    Inputs:
    - features: feature grid, shape (N, L, D)
    - projected: features W_feat + b from `attention_project_forward`, shape (N, L, A)
    - h: decoder hidden state, shape (N, H)
    - W_hidden: hidden-to-attention weights, shape (H, A)
    - w_score: scoring vector, shape (A,)
    Returns a tuple of:
    - context: sum_l alpha[:, l] * features[:, l], shape (N, D)
    - alpha: attention weights, shape (N, L), each row sums to 1
    - cache: values needed by `attention_step_backward`
    """
    op = "attention_step_forward"
    xp = backend.get_array_module(features, projected, h, W_hidden, w_score, op=op)
    _check_float(op, features=features, projected=projected, h=h, W_hidden=W_hidden,
                 w_score=w_score)
    _check_ndim(op, "features", features, 3, "(N, L, D)")
    _check_ndim(op, "projected", projected, 3, "(N, L, A)")
    _check_ndim(op, "h", h, 2, "(N, H)")
    N, L, D = features.shape
    A = projected.shape[2]
    H = h.shape[1]
    _check_shape(op, "projected", projected, (N, L, A))
    _check_shape(op, "h", h, (N, H))
    _check_shape(op, "W_hidden", W_hidden, (H, A))
    _check_shape(op, "w_score", w_score, (A,))

    hidden = h @ W_hidden                                   # (N, A)
    if attention_cuda.applies(xp, projected):              # the same math, 2 kernels (nn.attention_cuda)
        activations = attention_cuda.tanh_add(projected, hidden)
        alpha = attention_cuda.softmax_rows(xp, activations @ w_score)
    else:
        activations = projected + hidden[:, None, :]        # (N, L, A)
        xp.tanh(activations, out=activations)
        scores = activations @ w_score                      # (N, L)
        alpha = softmax(scores, axis=1)
    context = (alpha[:, None, :] @ features)[:, 0, :]       # (N, 1, L) x (N, L, D) -> (N, D)
    return context, alpha, (features, h, W_hidden, w_score, activations, alpha)


def attention_step_backward(dcontext, dalpha, cache, with_dfeatures=True):
    """Backward pass of `attention_step_forward`.

    Inputs:
    - dcontext: gradient of the context vector, shape (N, D)
    - dalpha: gradient of the attention weights, shape (N, L), or None when the
      loss does not use alpha directly (it does with the doubly stochastic
      regulariser of Show, Attend and Tell)
    - cache: from the forward pass
    - with_dfeatures: False skips dfeatures (returned as None). A decoder can
      get the features' gradient through the contexts of all T steps at once,
      alphas (N, T, L) transposed times dcontexts (N, T, D), instead of
      building an (N, L, D) array at every step.
    Returns a tuple of:
    - dfeatures: through the context vector only, shape (N, L, D), or None
    - dprojected: (N, L, A); hand it to `attention_project_backward` (summed over steps)
    - dh: (N, H)
    - dW_hidden: (H, A)
    - dw_score: (A,)
    """
    features, h, W_hidden, w_score, activations, alpha = cache
    op = "attention_step_backward"
    xp = backend.get_array_module(dcontext, dalpha, alpha, op=op)
    N, L, D = features.shape
    _check_shape(op, "dcontext", dcontext, (N, D))

    dfeatures = None
    if with_dfeatures:                                      # context = sum_l alpha_l features_l
        dfeatures = alpha[:, :, None] * dcontext[:, None, :]
    dalpha_total = (features @ dcontext[:, :, None])[:, :, 0]   # (N, L)
    if dalpha is not None:
        _check_shape(op, "dalpha", dalpha, (N, L))
    fused = attention_cuda.applies(xp, alpha)       # the same math, 1 kernel each for dscores, dprojected
    if fused:
        dscores = attention_cuda.softmax_backward_rows(xp, alpha, dalpha_total, dalpha)
    else:
        if dalpha is not None:
            dalpha_total += dalpha
        # softmax backward: dscores = alpha * (dalpha - sum_l alpha_l dalpha_l)
        dscores = dalpha_total
        dscores -= (alpha * dalpha_total).sum(axis=1, keepdims=True)
        dscores *= alpha
    # summed by einsum (not a matrix product): the caption models were trained with this rounding,
    # so a given seed reproduces their runs to the last bit
    dw_score = xp.einsum("nla,nl->a", activations, dscores)
    # scores = tanh(pre) @ w_score, so dpre = (dscores w_score^T) * (1 - tanh^2)
    if fused:
        dprojected = attention_cuda.dprojected(activations, dscores, w_score)
    else:
        dprojected = xp.multiply(activations, activations)
        xp.subtract(1, dprojected, out=dprojected)
        dprojected *= dscores[:, :, None]
        dprojected *= w_score
    dhidden = dprojected.sum(axis=1)                        # h W_hidden is broadcast over L
    return dfeatures, dprojected, dhidden @ W_hidden.T, h.T @ dhidden, dw_score


def attention_gate_forward(context, h, W_beta, b_beta, out=None):
    """The gate on the context vector: how much of what attention found to pass on.

        beta = sigmoid(h W_beta + b_beta)     (N, 1), one number per example
        gated = beta * context                (N, D)

    Inputs:
    - context: from `attention_step_forward`, shape (N, D)
    - h: the decoder hidden state the attention was computed from, shape (N, H)
    - W_beta: (H, 1), b_beta: (1,)
    - out: optional C-contiguous (N, D) array that receives gated (e.g. one step of a buffer)
    Returns a tuple of:
    - gated: (N, D) (out itself when given)
    - cache: values needed by `attention_gate_backward`
    """
    op = "attention_gate_forward"
    xp = backend.get_array_module(context, h, W_beta, b_beta, out, op=op)
    _check_float(op, context=context, h=h, W_beta=W_beta, b_beta=b_beta)
    _check_ndim(op, "context", context, 2, "(N, D)")
    _check_ndim(op, "h", h, 2, "(N, H)")
    N, H = h.shape
    _check_shape(op, "context", context, (N, context.shape[1]))
    _check_shape(op, "W_beta", W_beta, (H, 1))
    _check_shape(op, "b_beta", b_beta, (1,))
    if out is not None:
        _check_shape(op, "out", out, context.shape)
    gate_pre = h @ W_beta                                    # (N, 1)
    if attention_cuda.applies(xp, context):                 # the same math in 1 kernel (nn.attention_cuda)
        gated, beta = attention_cuda.gate_forward(xp, gate_pre, b_beta, context, out)
    else:
        beta = sigmoid(gate_pre + b_beta)
        gated = xp.multiply(beta, context, out=out)
    return gated, (context, h, W_beta, beta)


def attention_gate_backward(dgated, cache):
    """Backward pass of `attention_gate_forward`.

    Inputs:
    - dgated: gradient of the gated context, shape (N, D)
    - cache: from the forward pass
    Returns a tuple of:
    - dcontext: (N, D)
    - dh: (N, H)
    - dW_beta: (H, 1)
    - db_beta: (1,)
    """
    context, h, W_beta, beta = cache
    op = "attention_gate_backward"
    xp = backend.get_array_module(dgated, context, op=op)
    _check_shape(op, "dgated", dgated, context.shape)
    if attention_cuda.applies(xp, dgated):                  # the same math in 3 kernels (nn.attention_cuda)
        dcontext, dgate_pre = attention_cuda.gate_backward(xp, dgated, context, beta)
    else:
        dcontext = dgated * beta
        # sigmoid' = beta (1 - beta); beta multiplies every context entry, so its gradient sums over D
        dgate_pre = (dgated * context).sum(axis=1, keepdims=True) * beta * (1 - beta)
    return dcontext, dgate_pre @ W_beta.T, h.T @ dgate_pre, dgate_pre.sum(axis=0)


def attention_forward(features, h, W_feat, W_hidden, b, w_score):
    """Soft attention over a feature grid: attention weights and the context vector.

    e_l = w_score . tanh(features_l W_feat + h W_hidden + b), alpha = softmax over l,
    context = sum_l alpha_l features_l. (Equal to `attention_project_forward`
    followed by `attention_step_forward`; decoders attending many times over
    one image should use those two, see the module docstring.)

    Inputs:
    - features: feature grid, shape (N, L, D)
    - h: decoder hidden state, shape (N, H)
    - W_feat: (D, A), W_hidden: (H, A), b: (A,), w_score: (A,)
    Returns a tuple of:
    - context: (N, D)
    - alpha: attention weights, shape (N, L), each row sums to 1
    - cache: values needed by `attention_backward`
    """
    projected, project_cache = attention_project_forward(features, W_feat, b)
    context, alpha, step_cache = attention_step_forward(features, projected, h, W_hidden, w_score)
    return context, alpha, (project_cache, step_cache)


def attention_backward(dcontext, dalpha, cache):
    """Backward pass of `attention_forward`.

    Inputs:
    - dcontext: gradient of the context vector, shape (N, D)
    - dalpha: gradient of the attention weights, shape (N, L), or None
    - cache: from the forward pass
    Returns a tuple of:
    - dfeatures: (N, L, D)
    - dh: (N, H)
    - dW_feat: (D, A)
    - dW_hidden: (H, A)
    - db: (A,)
    - dw_score: (A,)
    """
    project_cache, step_cache = cache
    dfeatures, dprojected, dh, dW_hidden, dw_score = attention_step_backward(dcontext, dalpha,
                                                                             step_cache)
    dfeatures_projection, dW_feat, db = attention_project_backward(dprojected, project_cache)
    dfeatures += dfeatures_projection
    return dfeatures, dh, dW_feat, dW_hidden, db, dw_score
