"""Batch normalization for fully connected (N, D) and convolutional (N, C, H, W) inputs.

Training mode normalises with the statistics of the mini-batch and keeps
exponential running averages of them; test (eval) mode normalises with the
running averages, so it is a fixed per-feature affine map, exactly what a
pretrained network (e.g. EfficientNet-Lite0, eps 1e-3) needs at inference.

Both versions share one implementation: `spatial_batchnorm_*` only reduces
over the axes (N, H, W) instead of (N,), with no transpose copies.
"""
from .backend import get_array_module
from .dense import _check_float, _check_ndim, _check_shape

__all__ = [
    "batchnorm_forward", "batchnorm_backward",
    "spatial_batchnorm_forward", "spatial_batchnorm_backward",
]


def _batchnorm_forward(op, x, gamma, beta, bn_param, axes):
    """Shared forward: statistics over `axes`, features along axis 1."""
    xp = get_array_module(x, gamma, beta, op=op)
    _check_float(op, x=x, gamma=gamma, beta=beta)
    features = x.shape[1]
    _check_shape(op, "gamma", gamma, (features,))
    _check_shape(op, "beta", beta, (features,))
    mode = bn_param.get("mode", "train")
    eps = bn_param.get("eps", 1e-5)
    momentum = bn_param.get("momentum", 0.9)
    if mode not in ("train", "test"):
        raise ValueError(f"{op}: bn_param['mode'] must be 'train' or 'test', got {mode!r}")
    for key in ("running_mean", "running_var"):
        stat = bn_param.get(key)
        if stat is not None:
            get_array_module(x, stat, op=op)
            _check_shape(op, f"bn_param[{key!r}]", stat, (features,))
    # Per-feature parameters broadcast along axis 1: (1, D) or (1, C, 1, 1).
    shape = [1] * x.ndim
    shape[1] = features

    if mode == "test":
        if bn_param.get("running_mean") is None or bn_param.get("running_var") is None:
            raise ValueError(f"{op}: mode 'test' needs bn_param['running_mean'] and "
                             "bn_param['running_var'] (train first, or load them)")
        inv_std = (1 / xp.sqrt(bn_param["running_var"] + eps)).astype(x.dtype)
        scale = gamma * inv_std
        shift = beta - bn_param["running_mean"].astype(x.dtype) * scale
        # One fused affine map: out = x * scale + shift (two passes over x, in place).
        out = x * scale.reshape(shape)
        out += shift.reshape(shape)
        return out, ("test", x, gamma, inv_std, bn_param["running_mean"].astype(x.dtype), axes)

    mean = x.mean(axis=axes)
    centered = x - mean.reshape(shape)
    var = (centered * centered).mean(axis=axes)
    inv_std = 1 / xp.sqrt(var + eps)
    x_hat = centered
    x_hat *= inv_std.reshape(shape)           # reuse the buffer: centered is not needed again
    out = x_hat * gamma.reshape(shape)
    out += beta.reshape(shape)

    # Running averages, updated in place (references held by a layer see them)
    # and stored back in bn_param (as CS231n does) when they did not exist yet.
    for key, batch_stat in (("running_mean", mean), ("running_var", var)):
        stat = bn_param.get(key)
        if stat is None:   # CS231n starts both averages at zero
            bn_param[key] = (1 - momentum) * batch_stat
        else:
            stat *= momentum
            stat += (1 - momentum) * batch_stat
    return out, ("train", x_hat, gamma, inv_std, None, axes)


def _batchnorm_backward(dout, cache):
    """Shared backward for both layouts."""
    mode, saved, gamma, inv_std, running_mean, axes = cache
    shape = [1] * dout.ndim
    shape[1] = dout.shape[1]
    dbeta = dout.sum(axis=axes)
    if mode == "test":
        # out = gamma * (x - running_mean) * inv_std + beta: a per-feature affine map.
        x = saved
        x_hat = (x - running_mean.reshape(shape)) * inv_std.reshape(shape)
        dgamma = (dout * x_hat).sum(axis=axes)
        dx = dout * (gamma * inv_std).reshape(shape)
        return dx, dgamma, dbeta
    x_hat = saved
    dgamma = (dout * x_hat).sum(axis=axes)
    count = dout.size // dout.shape[1]        # elements per feature: N, or N * H * W
    # Simplified formula (the mean and variance gradients folded together):
    # dx = gamma * inv_std / m * (m * dout - sum(dout) - x_hat * sum(dout * x_hat))
    dx = dout * count
    dx -= dbeta.reshape(shape)
    dx -= x_hat * dgamma.reshape(shape)
    dx *= (gamma * inv_std / count).reshape(shape)
    return dx, dgamma, dbeta


def batchnorm_forward(x, gamma, beta, bn_param):
    """Batch normalization of (N, D) features.

    Training: out = gamma * (x - mean) / sqrt(var + eps) + beta with the batch
    mean and (biased) variance of each feature; the running averages become
    momentum * running + (1 - momentum) * batch statistic.
    Test: the same with running_mean and running_var instead.

    Inputs:
    - x: (N, D)
    - gamma: (D,) scale
    - beta: (D,) shift
    - bn_param: dict with keys
      - mode: 'train' or 'test' (required for test mode)
      - eps: added to the variance, default 1e-5 (EfficientNet uses 1e-3)
      - momentum: default 0.9
      - running_mean, running_var: (D,) arrays, updated in place in training;
        if absent they start at zero (as in CS231n) and are stored in
        bn_param after the first update. Test mode requires them.
    Returns:
    - out: (N, D)
    - cache: for `batchnorm_backward`
    """
    _check_ndim("batchnorm_forward", "x", x, 2, "(N, D)")
    return _batchnorm_forward("batchnorm_forward", x, gamma, beta, bn_param, axes=(0,))


def batchnorm_backward(dout, cache):
    """Backward pass of `batchnorm_forward`, with the compact simplified formula.

    With m examples per feature and x_hat the normalised input,
        dx = gamma / (m * sqrt(var + eps)) * (m * dout - sum(dout) - x_hat * sum(dout * x_hat)),
    the result of pushing the gradient through the mean and variance by hand
    and simplifying. In test mode the layer is affine: dx = dout * gamma / sqrt(running_var + eps).

    Inputs:
    - dout: (N, D) upstream gradient
    - cache: from the forward pass
    Returns:
    - dx: (N, D)
    - dgamma: (D,)
    - dbeta: (D,)
    """
    return _batchnorm_backward(dout, cache)


def spatial_batchnorm_forward(x, gamma, beta, bn_param):
    """Batch normalization for images: one mean/variance per channel over (N, H, W).

    Inputs:
    - x: (N, C, H, W)
    - gamma: (C,) scale
    - beta: (C,) shift
    - bn_param: as in `batchnorm_forward`, with (C,) running statistics
    Returns:
    - out: (N, C, H, W)
    - cache: for `spatial_batchnorm_backward`
    """
    _check_ndim("spatial_batchnorm_forward", "x", x, 4, "(N, C, H, W)")
    return _batchnorm_forward("spatial_batchnorm_forward", x, gamma, beta, bn_param, axes=(0, 2, 3))


def spatial_batchnorm_backward(dout, cache):
    """Backward pass of `spatial_batchnorm_forward` (the simplified formula, m = N * H * W).

    Inputs:
    - dout: (N, C, H, W) upstream gradient
    - cache: from the forward pass
    Returns:
    - dx: (N, C, H, W)
    - dgamma: (C,)
    - dbeta: (C,)
    """
    return _batchnorm_backward(dout, cache)
