"""A CNN trained end to end with the decoder, as the trainer and the `caption` command see it."""
import numpy

from nn import backend

__all__ = ["TrainableEncoder"]


class TrainableEncoder:
    """A small CNN (captioning.encoders.small_cnn.SmallCNN) trained end to end with the decoder.

    encode() normalises uint8 pixels (or floats in [0, 1]) with the CNN's
    `preprocess` mean/std and returns its grid (B, L, D) or pooled (B, D)
    features; backward() pushes d loss / d features into the CNN's grads.

    coords=True appends each grid location's (row, column), scaled to
    [-1, 1], to its feature vector (D + 2 values), as in CoordConv (Liu et al.
    2018). A small CNN with zero padding hardly knows WHERE a feature is, but
    shapes captions name positions ("at the top left", "to the left of") and
    list objects in reading order, so attention must find "the next object to
    the right". Pretrained EfficientNet grids are used as they are.
    """
    trainable = True

    def __init__(self, cnn, config, coords=False):
        self.cnn = cnn
        self.coords = bool(coords)
        self.spec = {"name": cnn.name, "config": dict(config, coords=self.coords)}
        self._kind = None

    @classmethod
    def small_cnn(cls, channels=(16, 32, 64), image_size=64, seed=0, coords=True, dtype=None):
        from .small_cnn import SmallCNN
        config = {"channels": list(channels), "image_size": int(image_size), "seed": int(seed)}
        cnn = SmallCNN(channels=tuple(channels), image_size=image_size, seed=seed, dtype=dtype)
        return cls(cnn, config, coords=coords)

    @classmethod
    def small_cnn_from_spec(cls, spec, state=None, dtype=None):
        """The small CNN a spec ({"name": "small_cnn", "config": {...}}) describes.

        state: the checkpoint's weights, all of them (a checkpoint lacking some
        is refused, never run with fresh weights); None for a new run, whose
        weights come from the spec's seed.
        """
        from ..models import ConfigMismatchError

        config = spec.get("config", {})
        try:
            encoder = cls.small_cnn(channels=config.get("channels", (16, 32, 64)),
                                    image_size=config.get("image_size", 64), seed=config.get("seed", 0),
                                    coords=config.get("coords", False), dtype=dtype)
        except (AttributeError, TypeError, ValueError) as exc:   # a damaged record, e.g. "channels": "x"
            raise ConfigMismatchError(f"small_cnn encoder record {spec} is damaged ({exc})") from None
        if state is not None:
            encoder.load_state_dict(state)
        return encoder

    def feature_dim(self, kind):
        """D of the features encode() returns for "grid" or "pooled"."""
        return self.cnn.feature_dim + (2 if self.coords and kind == "grid" else 0)

    def normalize(self, images, dtype):
        """uint8 (B, 3, H, W) pixels, or floats already in [0, 1] -> normalised floats on the backend."""
        xp = backend.xp()
        x = backend.asarray(images)
        scale = 1.0 / 255.0 if x.dtype.kind in "ui" else 1.0
        x = x.astype(dtype)
        x *= numpy.dtype(dtype).type(scale)
        pre = self.cnn.preprocess
        x -= xp.asarray(pre["mean"], dtype=dtype)[None, :, None, None]
        x /= xp.asarray(pre["std"], dtype=dtype)[None, :, None, None]
        return x

    def _with_coords(self, grid, height, width):
        xp = backend.get_array_module(grid)
        rows, cols = numpy.meshgrid(numpy.linspace(-1, 1, height), numpy.linspace(-1, 1, width), indexing="ij")
        where = xp.asarray(numpy.stack([rows.ravel(), cols.ravel()], axis=1), dtype=grid.dtype)  # (L, 2)
        return xp.concatenate([grid, xp.broadcast_to(where, (grid.shape[0],) + where.shape)], axis=2)

    def encode(self, images, kind, dtype):
        x = self.normalize(images, dtype)
        grid, pooled = self.cnn.forward(x)
        self._kind = kind
        if kind == "pooled":
            return pooled
        if self.coords:
            side = x.shape[2] // 2 ** self.cnn.stages, x.shape[3] // 2 ** self.cnn.stages
            return self._with_coords(grid, *side)
        return grid

    def file_encoder(self, kind, dtype):
        """A function: image files -> (features of `kind`, display images (N, 3, H, W) in [0, 1])."""
        from ..data.images import load_images

        self.eval()
        size = self.cnn.preprocess["size"]

        def encode_files(paths):
            pixels, _, _ = load_images(paths, size=size, resize="squash", dtype=dtype)
            return self.encode(pixels, kind, dtype), pixels
        return encode_files

    def backward(self, dfeatures):
        """Backpropagate d loss / d features into the CNN (fills its grads)."""
        if self._kind == "pooled":
            self.cnn.backward(None, dfeatures)
        elif self.coords:   # the coordinates are constants: their gradient goes nowhere
            xp = backend.get_array_module(dfeatures)
            self.cnn.backward(xp.ascontiguousarray(dfeatures[:, :, :self.cnn.feature_dim]))
        else:
            self.cnn.backward(dfeatures)

    def named_parameters(self, prefix=""):
        return self.cnn.named_parameters(prefix)

    def state_dict(self):
        return {k: backend.to_numpy(v) for k, v in self.cnn.state_dict().items()}

    def load_state_dict(self, state):
        """Load saved CNN weights: every array present, none unexpected, floats without NaN/inf
        (ConfigMismatchError naming what is wrong; nothing changes then)."""
        from ..models import ConfigMismatchError

        if not state:
            raise ConfigMismatchError("the checkpoint holds none of its small_cnn encoder's weights "
                                      "(no encoder/* arrays): it is damaged or incomplete")
        try:
            self.cnn.load_state_dict(state)
        except ValueError as exc:
            raise ConfigMismatchError(f"small_cnn encoder weights do not fit its configuration: {exc}") from None

    def train(self):
        self.cnn.train()
        return self

    def eval(self):
        self.cnn.eval()
        return self
