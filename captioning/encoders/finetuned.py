"""Fine-tuning the last K blocks of EfficientNet-Lite0 (and its 1x1 head) with the decoder.

The network is cut in two at block N - K (N = 16 MBConv blocks):

    images -> stem, blocks 0 .. N-K-1   (frozen: `TopInputs`, run ONCE per photo into a feature cache)
           -> blocks N-K .. N-1, head    (trainable: `EfficientNetTop`, run at every step)
           -> grid (B, 49, 1280), pooled (B, 1280)  -> the decoder

so an epoch runs only the small trainable top forward and backward, from the
cached activations entering block N - K (for K = 1: 192 x 7 x 7 per photo,
18 KB in float16). `FineTunedEncoder` is what the trainer holds (the same
interface as TrainableEncoder: encode, backward, file_encoder, ...).

Batchnorm stays in inference mode: each one is folded into its convolution
(w' = w * gamma / sqrt(var + eps), b' = beta - mean * gamma / sqrt(var + eps),
captioning.encoders.efficientnet) and the folded w' and b' are what trains.
With batches of a few dozen photos, batch statistics would be noisy estimates
of the ImageNet ones the weights were trained with, and at a 7 x 7 map there
are only 49 positions per photo to estimate them from; the usual practice when
fine-tuning with small batches is to keep the running statistics frozen,
which folding does exactly (and it costs nothing at run time).

No data augmentation: a cached activation is the activation of one fixed view
of the photo (squashed to 224 x 224), so random crops or flips would need
a cache per view (or running the whole network each step, which the cache is
there to avoid). With K = 1 only ~1.0 M weights of the encoder train (block 15
and the head), on 30000 captions of 6000 photos, with a learning rate a tenth
of the decoder's: a small, regularised change to a pretrained network, for
which the five captions per photo are variety enough.
"""
import math

from nn import backend
from nn.layers import Conv2d, Module, ReLU6

from .efficientnet import HEAD_CHANNELS, STAGES, EfficientNetLite0, blocks

__all__ = ["EfficientNetTop", "TopInputs", "FineTunedEncoder", "NUM_BLOCKS", "FINE_TUNED", "input_side",
           "fine_tune_blocks"]

NUM_BLOCKS = len(blocks())
FINE_TUNED = "efficientnet_lite0_ft"     # the encoder name in checkpoints


def input_side(size, k):
    """Side of the activation map entering block N - k for size x size images (TF "same"
    padding: every stride-s conv gives ceil(side / s)); 7 for 224 and k = 1..4."""
    side = math.ceil(size / 2)                       # the stem, stride 2
    for blk in blocks()[:NUM_BLOCKS - k]:
        side = math.ceil(side / blk.stride)
    return side


def fine_tune_blocks(spec):
    """K of a fine-tuned encoder's spec (a checkpoint's "encoder" record); 0 for any other encoder."""
    return int(spec.get("blocks", 0)) if isinstance(spec, dict) and spec.get("name") == FINE_TUNED else 0


def check_blocks(k):
    """ValueError unless k is a number of blocks that can be fine-tuned (1 .. 16)."""
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= NUM_BLOCKS:
        raise ValueError(f"the number of fine-tuned blocks must be an int from 1 to {NUM_BLOCKS}, got {k!r}")
    return k


class MBConv(Module):
    """One MBConv block of EfficientNet-Lite0 in trainable layers (batchnorm folded into biases).

    expand 1x1 conv + ReLU6 (absent for expand ratio 1) -> depthwise kxk conv
    (stride s) + ReLU6 -> project 1x1 conv (linear) -> + the input when the
    shapes allow. Padding is TensorFlow "same", as in EfficientNetLite0.
    """

    def __init__(self, spec, dtype=None, seed=0):
        super().__init__()
        hidden = spec.in_channels * spec.expand
        self.expand = None
        if spec.expand != 1:
            self.expand = self.add_child("expand", Conv2d(spec.in_channels, hidden, 1, pad="same", dtype=dtype,
                                                          seed=seed))
            self.expand_act = self.add_child("expand_act", ReLU6())
        self.depthwise = self.add_child("depthwise", Conv2d(hidden, hidden, spec.kernel, stride=spec.stride,
                                                            pad="same", groups=hidden, dtype=dtype, seed=seed + 1))
        self.depthwise_act = self.add_child("depthwise_act", ReLU6())
        self.project = self.add_child("project", Conv2d(hidden, spec.out_channels, 1, pad="same", dtype=dtype,
                                                        seed=seed + 2))
        self.residual = spec.stride == 1 and spec.in_channels == spec.out_channels

    def forward(self, x):
        """x (N, C_in, H, W) -> (N, C_out, H / stride, W / stride) (rounded up)."""
        h = x
        if self.expand is not None:
            h = self.expand_act.forward(self.expand.forward(h))
        h = self.project.forward(self.depthwise_act.forward(self.depthwise.forward(h)))
        return h + x if self.residual else h

    def backward(self, dout):
        """dout like the output -> dx like the input; fills the convs' grads."""
        dh = self.depthwise.backward(self.depthwise_act.backward(self.project.backward(dout)))
        if self.expand is not None:
            dh = self.expand.backward(self.expand_act.backward(dh))
        return dh + dout if self.residual else dh


class EfficientNetTop(Module):
    """The last k MBConv blocks of EfficientNet-Lite0 and its head (1x1 conv to 1280, ReLU6), trainable.

    forward: activations entering block N - k, (B, C, h, w) -> grid (B, L, 1280)
    (L = h' * w', row-major) and pooled (B, 1280), as EfficientNetLite0.features.
    Parameters: "block<i>.<expand|depthwise|project>.<w|b>" and "head.w", "head.b"
    (EfficientNetLite0.folded_units gives their pretrained values). A new
    top has random weights (seeded; for tests): load the pretrained ones.
    """

    def __init__(self, k, dtype=None, seed=0):
        super().__init__()
        self.k = check_blocks(k)
        for spec in blocks()[NUM_BLOCKS - k:]:
            self.add_child(f"block{spec.index}", MBConv(spec, dtype=dtype, seed=seed + 3 * spec.index))
        self.head = self.add_child("head", Conv2d(STAGES[-1][5], HEAD_CHANNELS, 1, pad="same", dtype=dtype,
                                                  seed=seed + 3 * NUM_BLOCKS))
        self.head_act = self.add_child("head_act", ReLU6())
        self.in_channels = blocks()[NUM_BLOCKS - k].in_channels
        self.feature_dim = HEAD_CHANNELS

    def forward(self, x):
        """Inputs:
        - x: (B, C, h, w) activations entering block N - k
        Returns:
        - grid: (B, L, 1280), L = h' * w' (h' = h for k <= 4 at 7 x 7)
        - pooled: (B, 1280), the mean over the L locations
        """
        if getattr(x, "ndim", None) != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"EfficientNetTop(k={self.k}): x must be (B, {self.in_channels}, h, w), "
                             f"got shape {tuple(getattr(x, 'shape', ()))}")
        for name, child in self.children.items():
            if name.startswith("block"):
                x = child.forward(x)
        fmap = self.head_act.forward(self.head.forward(x))
        n, d, h, w = fmap.shape
        self.cache = (n, d, h, w)
        grid = fmap.reshape(n, d, h * w).transpose(0, 2, 1)
        return grid, grid.mean(axis=1)

    def backward(self, dgrid, dpooled=None):
        """Inputs: dgrid (B, L, 1280) and/or dpooled (B, 1280) (None: no gradient there).
        Fills every layer's grads; returns dx (B, C, h, w)."""
        n, d, h, w = self._need_cache()
        if dgrid is None and dpooled is None:
            raise ValueError("EfficientNetTop.backward: give dgrid, dpooled or both")
        xp = backend.get_array_module(dgrid, dpooled, op="EfficientNetTop.backward")
        total = xp.zeros((n, h * w, d), dtype=(dgrid if dgrid is not None else dpooled).dtype)
        if dgrid is not None:
            total += dgrid
        if dpooled is not None:          # pooled = mean over L: each location gets dpooled / L
            total += dpooled[:, None, :] / (h * w)
        dx = self.head.backward(self.head_act.backward(xp.ascontiguousarray(total.transpose(0, 2, 1)).reshape(
            n, d, h, w)))
        for name, child in reversed(list(self.children.items())):
            if name.startswith("block"):
                dx = child.backward(dx)
        return dx


class TopInputs:
    """The frozen part of a fine-tuning of the last k blocks: images -> the activations entering
    block N - k, in the layout of a feature cache (what captioning.features.extract_features runs).

    features(images) -> (grid (B, h*w, C), pooled (B, C)): the activation map with its
    locations as rows (pooled, its mean, is stored by the cache but not used).
    Its `name` keys the cache by k: a cache of one k is refused for another.
    """

    def __init__(self, k, network=None):
        self.k = check_blocks(k)
        self.name = f"efficientnet_lite0_ft{k}"
        self.version = EfficientNetLite0.version
        self.preprocess = EfficientNetLite0.preprocess
        self._network = network

    def network(self):
        if self._network is None:
            self._network = EfficientNetLite0.from_pretrained()
        return self._network

    def activations(self, images):
        """(B, C, h, w) activations entering block N - k of preprocessed images (B, 3, H, W)."""
        return self.network().block_inputs(images, NUM_BLOCKS - self.k)

    def features(self, images):
        x = self.activations(images)
        n, c, h, w = x.shape
        grid = x.reshape(n, c, h * w).transpose(0, 2, 1)
        return grid, grid.mean(axis=1)


class FineTunedEncoder:
    """EfficientNet-Lite0 with its last k blocks and head trained with the decoder (batchnorm folded).

    encode() reads cached activations entering block N - k, as a feature cache
    stores them ((B, h*w, C) rows, e.g. float16), and runs the trainable top:
    grid (B, 49, 1280) or pooled (B, 1280) features; backward() pushes
    d loss / d features into the top's grads. file_encoder() runs the whole
    network on image files: the pretrained frozen part, then this top.

    spec (stored in checkpoints): {"name": "efficientnet_lite0_ft", "blocks": k,
    "version", "input": {size, resize, mean, std}}.
    """
    trainable = True

    def __init__(self, top, spec, network=None):
        self.top = top
        self.k = top.k
        self.spec = dict(spec)
        self.side = input_side(int(self.spec.get("input", {}).get("size", 224)), self.k)
        self._network = network
        self._kind = None

    @classmethod
    def new_spec(cls, k, identity=None):
        """The spec of a fine-tuning of the last k blocks (identity: a cache's encoder record)."""
        identity = identity or {}
        pre = EfficientNetLite0.preprocess
        default_input = {"size": pre["size"], "resize": pre["resize"], "mean": [float(v) for v in pre["mean"]],
                         "std": [float(v) for v in pre["std"]]}
        return {"name": FINE_TUNED, "blocks": check_blocks(k),
                "version": identity.get("version", EfficientNetLite0.version),
                "input": identity.get("input", default_input)}

    @classmethod
    def from_spec(cls, spec, state=None, dtype=None):
        """The encoder a spec describes: for a new run (state None) its top starts from the pretrained
        weights; from a checkpoint, ALL the top's weights must be in `state` (else ConfigMismatchError)."""
        from ..models import ConfigMismatchError

        try:
            top = EfficientNetTop(check_blocks(spec.get("blocks")), dtype=dtype)
        except (AttributeError, TypeError, ValueError) as exc:
            raise ConfigMismatchError(f"{FINE_TUNED} encoder record {spec} is damaged ({exc})") from None
        network = None
        if state is None:
            network = EfficientNetLite0.from_pretrained()
            top.load_state_dict(network.folded_units(NUM_BLOCKS - top.k))
        encoder = cls(top.to_backend(), spec, network)
        if state is not None:
            encoder.load_state_dict(state)
        return encoder

    def feature_dim(self, kind):
        return self.top.feature_dim

    def _activations(self, inputs, dtype):
        """Cached rows (B, h*w, C) (or maps (B, C, h, w)) -> maps (B, C, h, w) in `dtype` on the backend."""
        x = backend.asarray(inputs, dtype=dtype)
        if x.ndim == 4:
            return x
        if x.ndim != 3 or x.shape[1] != self.side * self.side or x.shape[2] != self.top.in_channels:
            raise ValueError(f"{FINE_TUNED} (k={self.k}): the cached activations must be (B, "
                             f"{self.side * self.side}, {self.top.in_channels}), got {tuple(x.shape)} "
                             "(a cache made for another --fine-tune-blocks?)")
        xp = backend.get_array_module(x)
        return xp.ascontiguousarray(x.transpose(0, 2, 1)).reshape(len(x), -1, self.side, self.side)

    def encode(self, inputs, kind, dtype):
        grid, pooled = self.top.forward(self._activations(inputs, dtype))
        self._kind = kind
        return pooled if kind == "pooled" else grid

    def backward(self, dfeatures):
        """Backpropagate d loss / d features (of the kind last encoded) into the top's grads."""
        if self._kind == "pooled":
            self.top.backward(None, dfeatures)
        else:
            self.top.backward(dfeatures)

    def file_encoder(self, kind, dtype):
        """A function: image files -> (features of `kind`, display images (N, 3, H, W) in [0, 1]):
        the pretrained network up to block N - k, then the fine-tuned top."""
        from ..data.images import load_images
        from ..models import ConfigMismatchError

        pre, wanted = EfficientNetLite0.preprocess, self.spec.get("input", {})
        if wanted and (wanted.get("size") != pre["size"] or wanted.get("resize") != pre["resize"]):
            raise ConfigMismatchError(f"trained on {FINE_TUNED} inputs {wanted}, this encoder uses {pre}")
        bottom = TopInputs(self.k, self._network)
        self.eval()

        def encode_files(paths):
            batch, _, _ = load_images(paths, size=pre["size"], resize=pre["resize"], mean=pre["mean"],
                                      std=pre["std"])
            features = self.encode(bottom.activations(batch.astype(backend.default_float())), kind, dtype)
            display, _, _ = load_images(paths, size=pre["size"], resize=pre["resize"])
            return features, display
        return encode_files

    def named_parameters(self, prefix=""):
        return self.top.named_parameters(prefix)

    def state_dict(self):
        return {k: backend.to_numpy(v) for k, v in self.top.state_dict().items()}

    def load_state_dict(self, state):
        """Load the fine-tuned top: every array present, none unexpected, finite floats
        (ConfigMismatchError naming what is wrong; nothing changes then)."""
        from ..models import ConfigMismatchError

        if not state:
            raise ConfigMismatchError(f"the checkpoint holds none of its fine-tuned {FINE_TUNED} encoder's "
                                      "weights (no encoder/* arrays): it is damaged or incomplete")
        try:
            self.top.load_state_dict(state)
        except ValueError as exc:
            raise ConfigMismatchError(f"{FINE_TUNED} encoder weights do not fit its configuration "
                                      f"(blocks {self.k}): {exc}") from None

    def train(self):
        self.top.train()     # no batchnorm or dropout in the top: train and eval compute the same
        return self

    def eval(self):
        self.top.eval()
        return self
