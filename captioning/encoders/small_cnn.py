"""A small CNN encoder trained end to end with the captioner (synthetic shapes, lessons).

Same job as EfficientNetLite0 (images -> a grid of feature vectors and their
mean), but small and trainable: its backward pass takes the gradients of the
grid and of the pooled vector and pushes them into its conv and batchnorm
parameters, so a decoder's loss trains the encoder too.

    for each stage: 3x3 conv (pad 1, no bias) -> batchnorm -> ReLU -> 2x2 max pool
    64x64 images, channels (16, 32, 64): 64 -> 32 -> 16 -> 8, grid (N, 64, 64)

Built from `nn.layers` (Conv2d, BatchNorm2d, ReLU, MaxPool2d in a Sequential).
"""
import hashlib

from nn import backend
from nn.layers import BatchNorm2d, Conv2d, MaxPool2d, Module, ReLU, Sequential

__all__ = ["SmallCNN"]


MAX_IMAGE_SIZE = 1024


class SmallCNN(Module):
    """Images (N, 3, H, W) -> grid (N, L, D) and pooled (N, D), trainable.

    Constructor inputs:
    - channels: output channels of each stage; D = channels[-1]
    - in_channels: 3 for RGB
    - image_size: the side the data pipeline resizes to (kept in `preprocess`)
    - seed / dtype: initialisation (see nn.layers)
    Each stage halves H and W, so L = (H / 2**stages) * (W / 2**stages).
    """

    name = "small_cnn"

    def __init__(self, channels=(16, 32, 64), in_channels=3, image_size=64, seed=0, dtype=None):
        super().__init__()
        if not channels:
            raise ValueError("SmallCNN: channels must list at least one stage")
        # each stage halves the picture: it must keep at least one pixel; and no photo is larger
        if not (isinstance(image_size, int) and 2 ** len(channels) <= image_size <= MAX_IMAGE_SIZE):
            raise ValueError(f"SmallCNN: image_size must be an int from {2 ** len(channels)} "
                             f"({len(channels)} halving stages) to {MAX_IMAGE_SIZE}, got {image_size!r}")
        layers = []
        c_in = in_channels
        for stage, c_out in enumerate(channels):
            layers += [Conv2d(c_in, c_out, 3, pad=1, bias=False, dtype=dtype, seed=seed + stage),
                       BatchNorm2d(c_out, dtype=dtype), ReLU(), MaxPool2d(2)]
            c_in = c_out
        self.body = self.add_child("body", Sequential(*layers))
        self.feature_dim = channels[-1]
        self.stages = len(channels)
        self.preprocess = {"size": image_size, "resize": "squash", "mean": (0.5,) * 3, "std": (0.5,) * 3}

    @property
    def version(self):
        """A digest of the current weights: a feature cache is valid for these weights only."""
        digest = hashlib.sha1()
        for name, value in sorted((n, v) for n, v in self.state_dict().items()):
            digest.update(name.encode())
            digest.update(backend.to_numpy(value).tobytes())
        return digest.hexdigest()[:12]

    def forward(self, images):
        """Inputs:
        - images: (N, 3, H, W), H and W divisible by 2**stages
        Returns:
        - grid: (N, L, D) feature vectors, L = h * w locations in row-major order
        - pooled: (N, D), the mean over the L locations
        """
        if getattr(images, "ndim", None) != 4:
            raise ValueError(f"SmallCNN: images must be (N, C, H, W), got shape {getattr(images, 'shape', None)}")
        fmap = self.body.forward(images)  # (N, D, h, w)
        n, d, h, w = fmap.shape
        grid = fmap.reshape(n, d, h * w).transpose(0, 2, 1)
        self.cache = (n, d, h, w)
        return grid, grid.mean(axis=1)

    def features(self, images):
        """Same as forward (the name the feature extractor uses)."""
        return self.forward(images)

    def backward(self, dgrid, dpooled=None):
        """Inputs:
        - dgrid: (N, L, D) gradient of the loss w.r.t. grid, or None
        - dpooled: (N, D) gradient w.r.t. pooled, or None
        Fills self.grads of every layer; returns dimages (N, 3, H, W).
        """
        n, d, h, w = self._need_cache()
        xp = backend.get_array_module(dgrid, dpooled, op="SmallCNN.backward")
        if dgrid is None and dpooled is None:
            raise ValueError("SmallCNN.backward: give dgrid, dpooled or both")
        total = xp.zeros((n, h * w, d), dtype=(dgrid if dgrid is not None else dpooled).dtype)
        if dgrid is not None:
            total += dgrid
        if dpooled is not None:
            # pooled = mean over L locations: each location gets dpooled / L
            total += dpooled[:, None, :] / (h * w)
        dfmap = total.transpose(0, 2, 1).reshape(n, d, h, w)
        return self.body.backward(dfmap)
