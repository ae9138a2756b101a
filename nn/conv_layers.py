"""Layers of convolutional networks: convolution, batch normalisation, pooling (see `nn.layers`)."""
import numpy

from . import functional as F
from . import init
from .module import Module

__all__ = ["Conv2d", "BatchNorm1d", "BatchNorm2d", "MaxPool2d", "AvgPool2d", "GlobalAvgPool"]


class Conv2d(Module):
    """2-D convolution over NCHW images.

    Inputs to the constructor:
    - in_channels C, out_channels F, kernel_size (int or (HH, WW))
    - stride: int
    - pad: int (all sides), (pad_h, pad_w), (top, bottom, left, right),
      "same" (TensorFlow same padding, computed for each input size by
      `F.same_padding`: the odd pixel goes bottom/right) or "valid" (0)
    - groups: C and F must both be divisible by it; groups == C is depthwise
    - bias: whether there is a bias b (F,)
    params: w (F, C // groups, HH, WW), and b (F,) when bias=True
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, pad=0, groups=1, bias=True,
                 weight_scale=None, dtype=None, seed=None, rng=None):
        super().__init__()
        c = init.positive_int("Conv2d", "in_channels", in_channels)
        f = init.positive_int("Conv2d", "out_channels", out_channels)
        self.groups = init.positive_int("Conv2d", "groups", groups)
        if c % self.groups or f % self.groups:
            raise ValueError(f"Conv2d: in_channels {c} and out_channels {f} must both be divisible "
                             f"by groups {self.groups}")
        self.kernel_size = init.pair("Conv2d", "kernel_size", kernel_size)
        self.stride = init.positive_int("Conv2d", "stride", stride)
        self.pad = self._parse_pad(pad)
        dtype = init.float_dtype(dtype)
        fan_in = (c // self.groups) * self.kernel_size[0] * self.kernel_size[1]
        std = numpy.sqrt(2.0 / fan_in) if weight_scale is None else weight_scale
        shape = (f, c // self.groups) + self.kernel_size
        self.add_param("w", init.normal(init.generator(seed, rng), shape, std, dtype))
        if bias:
            self.add_param("b", init.constant((f,), 0, dtype))

    @staticmethod
    def _parse_pad(pad):
        if isinstance(pad, str):
            if pad not in ("same", "valid"):
                raise ValueError(f"Conv2d: pad must be an int, a tuple, 'same' or 'valid', got {pad!r}")
            return (0, 0, 0, 0) if pad == "valid" else "same"
        if isinstance(pad, (tuple, list)):
            values = tuple(int(v) for v in pad)
            if len(values) == 2:
                values = (values[0], values[0], values[1], values[1])
            if len(values) != 4 or min(values) < 0:
                raise ValueError("Conv2d: pad tuple must be (pad_h, pad_w) or (top, bottom, left, "
                                 f"right) of non-negative ints, got {pad!r}")
            return values
        if int(pad) != pad or pad < 0:
            raise ValueError(f"Conv2d: pad must be a non-negative int, got {pad!r}")
        return (int(pad),) * 4

    def padding_for(self, height, width):
        """(top, bottom, left, right) padding used for an input of this size."""
        if self.pad != "same":
            return self.pad
        top, bottom = F.same_padding(height, self.kernel_size[0], self.stride)
        left, right = F.same_padding(width, self.kernel_size[1], self.stride)
        return (top, bottom, left, right)

    def forward(self, x):
        if getattr(x, "ndim", None) != 4:
            raise ValueError(f"Conv2d: x must be 4-D (N, C, H, W), got shape {getattr(x, 'shape', None)}")
        w = self.params["w"]
        b = self.params.get("b")  # None: no bias
        conv_param = {"stride": self.stride, "pad": self.padding_for(x.shape[2], x.shape[3]),
                      "groups": self.groups}
        out, self.cache = F.conv_forward(x, w, b, conv_param)
        return out

    def backward(self, dout):
        dx, dw, db = F.conv_backward(dout, self._need_cache())
        if "b" in self.params:
            self._set_grads(w=dw, b=db)
        else:
            self._set_grads(w=dw)
        return dx

    def extra_repr(self):
        return (f"w={tuple(self.params['w'].shape)}, stride={self.stride}, pad={self.pad!r}, "
                f"groups={self.groups}, bias={'b' in self.params}")


class _BatchNorm(Module):
    """Shared code of BatchNorm1d and BatchNorm2d.

    params: gamma (C,), beta (C,); buffers: running_mean (C,), running_var (C,)
    Running statistics follow the CS231n convention:
    running = momentum * running + (1 - momentum) * batch statistic.
    """

    forward_op = None
    backward_op = None
    NONNEGATIVE_BUFFERS = ("running_var",)

    def __init__(self, num_features, eps=1e-5, momentum=0.9, dtype=None, seed=None, rng=None):
        super().__init__()
        c = init.positive_int(type(self).__name__, "num_features", num_features)
        dtype = init.float_dtype(dtype)
        self.eps = float(eps)
        self.momentum = float(momentum)
        self.add_param("gamma", init.constant((c,), 1, dtype))
        self.add_param("beta", init.constant((c,), 0, dtype))
        self.add_buffer("running_mean", init.constant((c,), 0, dtype))
        self.add_buffer("running_var", init.constant((c,), 1, dtype))

    def forward(self, x):
        bn_param = {
            "mode": "train" if self.training else "test",
            "eps": self.eps,
            "momentum": self.momentum,
            "running_mean": self.buffers["running_mean"],
            "running_var": self.buffers["running_var"],
        }
        out, self.cache = type(self).forward_op(x, self.params["gamma"], self.params["beta"], bn_param)
        # The op may update the statistics in place or put new arrays in bn_param.
        for key in ("running_mean", "running_var"):
            if bn_param[key] is not self.buffers[key]:
                self.buffers[key][...] = bn_param[key]
        return out

    def backward(self, dout):
        dx, dgamma, dbeta = type(self).backward_op(dout, self._need_cache())
        self._set_grads(gamma=dgamma, beta=dbeta)
        return dx

    def extra_repr(self):
        return f"C={self.params['gamma'].shape[0]}, eps={self.eps}, momentum={self.momentum}"


class BatchNorm1d(_BatchNorm):
    """Batch normalisation of (N, D) activations over the batch axis."""
    forward_op = staticmethod(F.batchnorm_forward)
    backward_op = staticmethod(F.batchnorm_backward)


class BatchNorm2d(_BatchNorm):
    """Batch normalisation of (N, C, H, W) feature maps per channel (over N, H, W)."""
    forward_op = staticmethod(F.spatial_batchnorm_forward)
    backward_op = staticmethod(F.spatial_batchnorm_backward)


class _Pool2d(Module):
    forward_op = None
    backward_op = None

    def __init__(self, kernel_size, stride=None):
        super().__init__()
        name = type(self).__name__
        self.kernel_size = init.pair(name, "kernel_size", kernel_size)
        self.stride = self.kernel_size[0] if stride is None else init.positive_int(name, "stride", stride)

    def forward(self, x):
        pool_param = {"pool_height": self.kernel_size[0], "pool_width": self.kernel_size[1],
                      "stride": self.stride}
        out, self.cache = type(self).forward_op(x, pool_param)
        return out

    def backward(self, dout):
        return type(self).backward_op(dout, self._need_cache())

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}"


class MaxPool2d(_Pool2d):
    """Max pooling over (kernel_h, kernel_w) windows; stride defaults to kernel_h."""
    forward_op = staticmethod(F.max_pool_forward)
    backward_op = staticmethod(F.max_pool_backward)


class AvgPool2d(_Pool2d):
    """Average pooling over (kernel_h, kernel_w) windows; stride defaults to kernel_h."""
    forward_op = staticmethod(F.avg_pool_forward)
    backward_op = staticmethod(F.avg_pool_backward)


class GlobalAvgPool(Module):
    """Mean over the spatial axes: (N, C, H, W) -> (N, C)."""

    def forward(self, x):
        out, self.cache = F.global_avg_pool_forward(x)
        return out

    def backward(self, dout):
        return F.global_avg_pool_backward(dout, self._need_cache())

