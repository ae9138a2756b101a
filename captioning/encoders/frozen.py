"""A frozen pretrained CNN whose outputs were cached, as the trainer and the `caption` command see it."""
from nn import backend

__all__ = ["FrozenFeatures"]


class FrozenFeatures:
    """Precomputed features (a frozen pretrained CNN's cached outputs): nothing to train.

    spec: JSON description stored in checkpoints, e.g. {"name": "efficientnet_lite0",
    "version": ..., "input": {size, resize, mean, std}}.
    network: a function returning the pretrained CNN itself (name, preprocess,
    features(images) -> (grid, pooled)), needed only to caption new image files.
    """
    trainable = False

    def __init__(self, spec, network=None):
        self.spec = dict(spec)
        self._network = network

    @classmethod
    def from_spec(cls, spec, state=None, network=None):
        """The frozen encoder of a checkpoint (whose `state` must hold no encoder weights) or of a new run."""
        from ..models import ConfigMismatchError

        if state:
            raise ConfigMismatchError(f"the checkpoint holds encoder/* arrays ({', '.join(sorted(state)[:3])}, "
                                      f"...) but its encoder {spec.get('name')} is frozen: it is damaged")
        return cls(spec, network)

    def encode(self, inputs, kind, dtype):
        """inputs (B, L, D) or (B, D) -> features of `kind` ("grid"/"pooled") on the backend."""
        features = backend.asarray(inputs, dtype=dtype)
        if kind == "pooled" and features.ndim == 3:
            features = features.mean(axis=1)
        if kind == "grid" and features.ndim != 3:
            raise ValueError(f"the attention model needs a feature grid (N, L, D); these features "
                             f"have shape {tuple(features.shape)} (pooled only?)")
        return features

    def file_encoder(self, kind, dtype):
        """A function: image files -> (features of `kind`, display images (N, 3, H, W) in [0, 1]).

        Runs the pretrained CNN; refuses one that resizes images otherwise than
        the one whose cached features the model was trained on.
        """
        from ..data.images import load_images
        from ..models import ConfigMismatchError

        if self._network is None:
            raise ConfigMismatchError(f"no pretrained network for the encoder {self.spec.get('name')!r}")
        net = self._network()
        pre, wanted = net.preprocess, self.spec.get("input", {})
        if wanted and (wanted.get("size") != pre["size"] or wanted.get("resize") != pre["resize"]):
            raise ConfigMismatchError(f"trained on {self.spec.get('name')} inputs {wanted}, this encoder "
                                      f"uses {pre}")

        def encode_files(paths):
            batch, _, _ = load_images(paths, size=pre["size"], resize=pre["resize"], mean=pre["mean"],
                                      std=pre["std"])
            grid, pooled = net.features(batch.astype(backend.default_float()))
            features = (grid if kind == "grid" else pooled).astype(dtype)
            display, _, _ = load_images(paths, size=pre["size"], resize=pre["resize"])
            return features, display
        return encode_files

    def backward(self, dfeatures):  # pragma: no cover - never called: not trainable
        raise RuntimeError("FrozenFeatures has no parameters to train")

    def named_parameters(self, prefix=""):
        return iter(())

    def state_dict(self):
        return {}

    def train(self):
        return self

    def eval(self):
        return self
