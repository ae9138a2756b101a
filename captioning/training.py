"""Training a captioner: teacher forcing, Adam, clipping, validation by BLEU-4, checkpoints.

One epoch visits every (image, caption) pair of the train split once, in an
order drawn from the seed. Each step:

    features = encoder(images of the batch)          # cached features, or a small CNN
    loss, grads = model.forward_backward(features, captions)   # teacher forcing
    (trainable encoder: its backward pass from d loss / d features)
    clip the global gradient norm; Adam step

After each epoch the model CAPTIONS the dev images (greedy or beam search) and
is scored by BLEU-4 against their reference captions; this, not the
teacher-forced loss, drives the learning-rate decay on plateau (unless
`lr_decay_to` < 1 sets a linear decay instead), early stopping and the choice
of `best.npz`. `last.npz` holds the latest state.

Reproducibility and exact resume: every random number of a run comes from the
seed and a counter, never from a generator that runs on in the background:
- the order of the pairs in epoch e: numpy default_rng([seed, e]) (a permutation;
  with length_buckets k > 0, batches of similar caption length, shuffled: see
  Trainer.epoch_batches);
- the dropout mask of step s: a seed from SeedSequence([seed, 1, s]).
A checkpoint stores epoch, step and the position inside the epoch, so
`--resume` recreates exactly the random numbers the uninterrupted run would
have used (tests check that the parameters come out identical).

A non-finite loss or gradient norm stops training with a clear message; the
checkpoints on disk are then the last good ones (nothing is written after
the bad step).
"""
import math
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from typing import List, Optional

import numpy

from nn import backend
from nn.optim import Adam, ReduceOnPlateau, clip_grad_norm
from nn.persist import atomic_write, remove_stale_temporaries

from .checkpoint import load_checkpoint, save_checkpoint
from .decoding import DecodeResult, beam_search, greedy_decode
from .metrics import bleu, cider_d
from .models import ConfigMismatchError

__all__ = ["TrainConfig", "CaptionData", "FrozenFeatures", "TrainableEncoder", "make_encoder", "Trainer",
           "TrainingDiverged", "encode_captions", "generate_captions", "evaluate_captions",
           "format_duration"]


class TrainingDiverged(RuntimeError):
    """The loss or the gradients became NaN or infinite."""


@dataclass
class TrainConfig:
    """Hyperparameters of a run (saved in every checkpoint)."""
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3                 # Adam learning rate
    clip: float = 5.0                # global gradient-norm clipping threshold
    weight_decay: float = 0.0
    beam: int = 1                    # decoding for validation: 1 = greedy
    max_length: int = 20             # decoding steps (tokens incl. <END>)
    max_words: int = 20              # training captions are cut to this many words
    lr_factor: float = 0.5           # ReduceOnPlateau on dev BLEU-4 ...
    lr_patience: int = 1             # ... after this many epochs without improvement
    lr_decay_to: float = 1.0         # < 1: instead, lr falls linearly, step by step, to lr * lr_decay_to
                                     # at the end of the planned epochs (see Trainer.scheduled_lr)
    patience: int = 4                # early stopping: epochs without a better dev BLEU-4
    seed: int = 0
    max_minutes: Optional[float] = None   # stop (and checkpoint) after this much training time
    val_images: Optional[int] = None      # decode only the first N dev images each epoch
    log_every: float = 10.0               # seconds between progress lines
    length_buckets: int = 0               # sort windows of this many batches by caption length (0 = off)

    @classmethod
    def from_dict(cls, data):
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


# ---------------------------------------------------------------- data

@dataclass
class CaptionData:
    """One split ready for training or evaluation.

    inputs:     what the encoder reads, leading axis N images: cached features
                (N, L, D) / (N, D) (NumPy array or memmap), or uint8 pixels (N, 3, H, W)
    references: per image, its reference captions as token lists (raw words:
                out-of-vocabulary words stay, BLEU needs them)
    image_ids:  per image, its id (file name)
    """
    inputs: object
    references: List[List[List[str]]]
    image_ids: List[str]

    def __len__(self):
        return len(self.image_ids)

    def head(self, n):
        """The first n images (e.g. a quick validation subset)."""
        if n is None or n >= len(self):
            return self
        return CaptionData(self.inputs[:n], self.references[:n], self.image_ids[:n])


def encode_captions(data, vocabulary, max_words):
    """Every (image, caption) pair as ids.

    Returns:
    - image_index: (P,) int64, the image of each caption
    - captions: (P, max_words + 2) int64, <START> w1 .. wn <END> then <NULL> (0) padding;
      out-of-vocabulary words become <UNK>
    """
    rows, owners = [], []
    for i, refs in enumerate(data.references):
        for tokens in refs:
            rows.append(vocabulary.encode(tokens, max_length=max_words))
            owners.append(i)
    captions = numpy.zeros((len(rows), max_words + 2), dtype=numpy.int64)
    for r, ids in enumerate(rows):
        captions[r, :len(ids)] = ids
    return numpy.asarray(owners, dtype=numpy.int64), captions


# ---------------------------------------------------------------- encoders

class FrozenFeatures:
    """Precomputed features (a frozen pretrained CNN's cached outputs): nothing to train.

    spec: JSON description stored in checkpoints, e.g. {"name": "efficientnet_lite0", ...}.
    """
    trainable = False

    def __init__(self, spec):
        self.spec = dict(spec)

    def encode(self, inputs, kind, dtype):
        """inputs (B, L, D) or (B, D) -> features of `kind` ("grid"/"pooled") on the backend."""
        features = backend.asarray(inputs, dtype=dtype)
        if kind == "pooled" and features.ndim == 3:
            features = features.mean(axis=1)
        if kind == "grid" and features.ndim != 3:
            raise ValueError(f"the attention model needs a feature grid (N, L, D); these features "
                             f"have shape {tuple(features.shape)} (pooled only?)")
        return features

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
        from .encoders.small_cnn import SmallCNN
        config = {"channels": list(channels), "image_size": int(image_size), "seed": int(seed)}
        cnn = SmallCNN(channels=tuple(channels), image_size=image_size, seed=seed, dtype=dtype)
        return cls(cnn, config, coords=coords)

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


def make_encoder(spec, state=None, dtype=None):
    """The encoder a checkpoint's spec describes, trainable CNN weights loaded from `state`
    (all of them: a checkpoint lacking some is refused, never run with fresh weights)."""
    name = spec.get("name") if isinstance(spec, dict) else None
    if name == "small_cnn":
        config = spec.get("config", {})
        try:
            encoder = TrainableEncoder.small_cnn(channels=config.get("channels", (16, 32, 64)),
                                                 image_size=config.get("image_size", 64),
                                                 seed=config.get("seed", 0), coords=config.get("coords", False),
                                                 dtype=dtype)
        except (AttributeError, TypeError, ValueError) as exc:   # a damaged record, e.g. "channels": "x"
            raise ConfigMismatchError(f"small_cnn encoder record {spec} is damaged ({exc})") from None
        encoder.load_state_dict(state)
        return encoder
    if name == "efficientnet_lite0":
        if state:   # a frozen encoder has no weights in a checkpoint
            raise ConfigMismatchError(f"the checkpoint holds encoder/* arrays ({', '.join(sorted(state)[:3])}, ...) "
                                      "but its encoder efficientnet_lite0 is frozen: it is damaged")
        return FrozenFeatures(spec)
    raise ConfigMismatchError(f"unknown image encoder {spec!r} (expected small_cnn or efficientnet_lite0)")


class _Trainable:
    """Decoder and encoder parameters as one tree (what the optimizer and clipping see)."""

    def __init__(self, model, encoder):
        self.model, self.encoder = model, encoder

    def named_parameters(self):
        yield from self.model.named_parameters("decoder")
        yield from self.encoder.named_parameters("encoder")


# ---------------------------------------------------------------- decoding and scoring

def generate_captions(model, encoder, data, vocabulary, beam=1, max_length=20, length_alpha=0.0,
                      batch_size=100):
    """Caption every image of `data`.

    Returns (captions, result): captions = per image, a list of words; result
    = the captioning.decoding.DecodeResult (sequences, scores, attention).
    """
    model.eval()
    encoder.eval()
    results = []
    for start in range(0, len(data), batch_size):
        features = encoder.encode(data.inputs[start:start + batch_size], model.feature_kind, model.dtype)
        if beam > 1:
            results.append(beam_search(model, features, model.start_id, model.end_id, beam_size=beam,
                                       max_length=max_length, length_alpha=length_alpha))
        else:
            results.append(greedy_decode(model, features, model.start_id, model.end_id,
                                         max_length=max_length))
    sequences = [s for r in results for s in r.sequences]
    attention = None
    if results and results[0].attention is not None:
        attention = [a for r in results for a in r.attention]
    merged = DecodeResult(sequences=sequences,
                          scores=numpy.concatenate([r.scores for r in results]) if results else numpy.zeros(0),
                          finished=numpy.concatenate([r.finished for r in results]) if results else
                          numpy.zeros(0, dtype=bool),
                          attention=attention)
    captions = [vocabulary.decode(seq) for seq in sequences]
    return captions, merged


def evaluate_captions(references, captions, with_cider=True):
    """{"bleu": [BLEU-1..4], "cider": CIDEr-D} of generated captions (fractions, not x100)."""
    scores = {"bleu": [float(b) for b in bleu(references, captions)]}
    if with_cider:
        scores["cider"] = float(cider_d(references, captions))
    return scores


# ---------------------------------------------------------------- the trainer

def format_duration(seconds):
    seconds = max(0, int(round(seconds)))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def _dropout_seed(seed, step):
    return int(numpy.random.SeedSequence([seed, 1, step]).generate_state(1)[0])


@dataclass
class _Progress:
    """Where the run is: saved in checkpoints, restored by resume()."""
    epoch: int = 0                 # current epoch (0-based)
    batch: int = 0                 # next batch inside the current epoch
    step: int = 0                  # optimizer steps taken in the whole run
    epoch_loss_sum: float = 0.0    # sum of batch losses in the current epoch so far
    epoch_tokens: int = 0
    elapsed: float = 0.0           # seconds of training so far (all sessions)
    best_bleu: float = -1.0        # best dev BLEU-4 of any validation (decides best.npz)
    best_epoch: int = -1
    best_whole_epoch_bleu: float = -1.0   # best of whole epochs only (decides early stopping)
    epochs_since_best: int = 0
    history: list = field(default_factory=list)      # one dict per finished epoch
    loss_trace: list = field(default_factory=list)   # [step, mean loss] every few steps
    stopped_early: bool = False


class Trainer:
    """Trains `model` (with `encoder`) on `train` and validates on `dev` by BLEU-4.

    out_dir gets best.npz, last.npz and curves.png. `log` is a print-like
    function for progress lines.
    """

    def __init__(self, model, vocabulary, encoder, train, dev, config, out_dir, log=print,
                 data_spec=None):
        self.model, self.vocabulary, self.encoder = model, vocabulary, encoder
        self.train_data, self.dev_data = train, dev
        self.config = config
        self.out_dir = os.fspath(out_dir)
        self.log = log
        self.data_spec = data_spec or {}
        if len(vocabulary) != model.config["vocab_size"]:
            raise ConfigMismatchError(f"vocabulary has {len(vocabulary)} words, model expects "
                                      f"{model.config['vocab_size']}")
        self.image_index, self.captions = encode_captions(train, vocabulary, config.max_words)
        self.params = _Trainable(model, encoder)
        self.optimizer = Adam(self.params, lr=config.lr, weight_decay=config.weight_decay)
        self.scheduler = ReduceOnPlateau(self.optimizer, factor=config.lr_factor,
                                         patience=config.lr_patience, mode="max")
        self.progress = _Progress()
        self._stop_requested = False
        # How to go on after a Ctrl-C, printed when fit() stops for one (None: no advice).
        self.resume_hint = "resume with --resume"
        os.makedirs(self.out_dir, exist_ok=True)
        # the temporary file of a save that a kill -9 cut short (atomic_write's .<name>.*.tmp)
        remove_stale_temporaries([self.best_path, self.last_path, os.path.join(self.out_dir, "curves.png")])

    @property
    def interrupted(self):
        """True once a Ctrl-C stopped fit() (it returns normally, last.npz saved)."""
        return self._stop_requested

    # ------------------------------------------------------------ paths
    @property
    def best_path(self):
        return os.path.join(self.out_dir, "best.npz")

    @property
    def last_path(self):
        return os.path.join(self.out_dir, "last.npz")

    @property
    def steps_per_epoch(self):
        buckets, size = self.config.length_buckets, self.config.batch_size
        if buckets <= 0:
            return math.ceil(len(self.captions) / size)
        full, rest = divmod(len(self.captions), buckets * size)
        return full * buckets + math.ceil(rest / size)

    # ------------------------------------------------------------ checkpoints
    def _training_state(self):
        return {"config": asdict(self.config), "progress": asdict(self.progress),
                "scheduler": self.scheduler.state_dict(), "data": self.data_spec,
                "rng": {"seed": self.config.seed,
                        "scheme": "batches of epoch e: default_rng([seed, e]), see Trainer.epoch_batches; "
                                  "dropout of step s: SeedSequence([seed, 1, s])"}}

    def save(self, path):
        return save_checkpoint(path, self.model, self.vocabulary, self.encoder.spec,
                               encoder_state=self.encoder.state_dict(), optimizer=self.optimizer,
                               training=self._training_state())

    def resume(self, path):
        """Continue from a checkpoint written by this trainer (normally last.npz)."""
        ckpt = load_checkpoint(path, dtype=self.model.dtype)
        if ckpt.model.config != self.model.config:
            raise ConfigMismatchError(f"{path}: model configuration {ckpt.model.config} differs from "
                                      f"this run's {self.model.config}")
        if ckpt.vocabulary != self.vocabulary:
            raise ConfigMismatchError(f"{path}: its vocabulary ({len(ckpt.vocabulary)} words) is not the "
                                      f"one of this data ({len(self.vocabulary)} words)")
        if ckpt.encoder != self.encoder.spec:
            raise ConfigMismatchError(f"{path}: encoder {ckpt.encoder} differs from this run's "
                                      f"{self.encoder.spec}")
        state = ckpt.training
        if "progress" not in state:
            raise ConfigMismatchError(f"{path}: holds no training state to resume from")
        differences = self._resume_differences(state)
        if differences:
            raise ConfigMismatchError(f"{path}: cannot continue that run exactly, this run differs: "
                                      + "; ".join(differences) + " (give the options of the original run)")
        self.model.load_state_dict(ckpt.model.state_dict())
        if self.encoder.trainable:
            self.encoder.load_state_dict(ckpt.encoder_state)
        self.optimizer.load_state_dict(ckpt.optimizer_state)
        self.scheduler.load_state_dict(state["scheduler"])
        self.progress = _Progress(**state["progress"])
        if "best_whole_epoch_bleu" not in state["progress"]:   # a checkpoint from before that field
            self.progress.best_whole_epoch_bleu = self.progress.best_bleu
        return self

    # Settings that decide the batches, the random numbers or the updates: a resumed run
    # must use the checkpoint's, or it would silently become another run. (Epochs,
    # patience, time limit and validation may change, e.g. to train longer.)
    RESUME_FIXED = ("batch_size", "seed", "length_buckets", "max_words", "lr", "lr_decay_to", "clip",
                    "weight_decay", "lr_factor", "lr_patience")
    RESUME_FIXED_DATA = ("name", "max_images", "n_train", "n_dev", "n_test", "seed", "image_size")

    def _resume_differences(self, state):
        """Lines 'setting: checkpoint X, now Y' for every RESUME_FIXED setting that changed."""
        saved, now = state.get("config", {}), asdict(self.config)
        fixed = self.RESUME_FIXED + (("epochs",) if self.config.lr_decay_to < 1 else ())  # the decay spans them
        lines = [f"{key}: checkpoint {saved[key]!r}, now {now[key]!r}"
                 for key in fixed if key in saved and saved[key] != now[key]]
        saved_data, data = state.get("data") or {}, self.data_spec or {}
        lines += [f"data {key}: checkpoint {saved_data.get(key)!r}, now {data.get(key)!r}"
                  for key in self.RESUME_FIXED_DATA
                  if (key in saved_data or key in data) and saved_data.get(key) != data.get(key)]
        return lines

    # ------------------------------------------------------------ one step
    def scheduled_lr(self, step):
        """The learning rate of optimizer step `step` (0-based) when lr_decay_to < 1.

        It falls linearly from lr to lr * lr_decay_to over epochs * steps_per_epoch
        steps. It depends on the step number only, so --resume continues it
        exactly. (On the synthetic set a constant rate left the dev BLEU-4
        jumping between epochs, 86 -> 73 -> 91; falling to a tenth it rose
        steadily, 82 -> 89 -> 95, in the same 3 epochs.)
        """
        total = max(self.config.epochs * self.steps_per_epoch, 1)
        return self.config.lr * (1.0 - (1.0 - self.config.lr_decay_to) * min(step / total, 1.0))

    def epoch_batches(self, epoch):
        """The caption rows of every batch of `epoch`, a list of int arrays (same for the same seed).

        Shuffle all captions. With `length_buckets` = k > 0, sort each window
        of k batches by caption length, cut it into batches and shuffle the
        batches: each batch holds captions of similar length, so less time
        goes into padding (Flickr8k, batches of 64: 12.2 LSTM steps per batch
        instead of 20.7) while the order stays random. Off by default: on the
        synthetic set, where a caption's length gives away its template and
        object count, such batches are all alike and learning was much slower
        (dev BLEU-4 52 instead of 83 after one epoch).
        """
        if getattr(self, "_batches_epoch", None) != epoch:
            gen = numpy.random.default_rng([self.config.seed, epoch])
            order = gen.permutation(len(self.captions))
            size = self.config.batch_size
            if self.config.length_buckets > 0:
                lengths = (self.captions != 0).sum(axis=1)
                window = self.config.length_buckets * size
                batches = []
                for start in range(0, len(order), window):
                    chunk = order[start:start + window]
                    chunk = chunk[numpy.argsort(lengths[chunk], kind="stable")]
                    batches += [chunk[i:i + size] for i in range(0, len(chunk), size)]
                batches = [batches[i] for i in gen.permutation(len(batches))]
            else:
                batches = [order[i:i + size] for i in range(0, len(order), size)]
            self._batches, self._batches_epoch = batches, epoch
        return self._batches

    def _batch(self, epoch, batch):
        rows = self.epoch_batches(epoch)[batch]
        captions = self.captions[rows]
        length = int((captions != 0).sum(axis=1).max())   # trim padding shared by the whole batch
        return self.image_index[rows], captions[:, :length]

    def train_step(self, epoch, batch):
        """One optimizer step; returns (loss, number of target tokens)."""
        images, captions = self._batch(epoch, batch)
        # each image of the batch is encoded once, however many of its captions were drawn
        unique, inverse = numpy.unique(images, return_inverse=True)
        encoded = self.encoder.encode(self.train_data.inputs[unique], self.model.feature_kind,
                                      self.model.dtype)
        inverse = backend.asarray(inverse)
        loss, _, dfeatures = self.model.forward_backward(
            encoded[inverse], backend.asarray(captions), feature_grad=self.encoder.trainable,
            dropout_seed=_dropout_seed(self.config.seed, self.progress.step))
        if self.encoder.trainable:   # sum the gradients of the captions that share an image
            dencoded = backend.get_array_module(encoded).zeros_like(encoded)
            backend.scatter_add(dencoded, inverse, dfeatures)
            self.encoder.backward(dencoded)
        norm = clip_grad_norm(self.params, self.config.clip)
        if not (math.isfinite(loss) and math.isfinite(norm)):
            p = self.progress
            raise TrainingDiverged(
                f"loss became {loss} (gradient norm {norm}) at epoch {p.epoch + 1}, step {p.step + 1}; "
                f"training stopped. The last good checkpoints are untouched in {self.out_dir} "
                "(last.npz, best.npz, where they exist). Try a lower --lr or a smaller --clip.")
        if self.config.lr_decay_to < 1.0:
            self.optimizer.lr = self.scheduled_lr(self.progress.step)
        self.optimizer.step()
        return loss, int((captions[:, 1:] != 0).sum())

    # ------------------------------------------------------------ validation
    def validate(self):
        """Dev BLEU-1..4 of generated captions (decoding as configured)."""
        dev = self.dev_data.head(self.config.val_images)
        captions, _ = generate_captions(self.model, self.encoder, dev, self.vocabulary,
                                        beam=self.config.beam, max_length=self.config.max_length)
        self.model.train()
        self.encoder.train()
        return evaluate_captions(dev.references, captions, with_cider=False)["bleu"], captions

    # ------------------------------------------------------------ the loop
    def _request_stop(self, signum, frame):
        if self._stop_requested:
            raise KeyboardInterrupt
        self._stop_requested = True
        self.log("\ninterrupt: finishing this step and saving last.npz (press Ctrl-C again to abort)")

    def fit(self, stop_after_steps=None):
        """Train until the epochs are done, early stopping, --max-minutes, or an interrupt.

        stop_after_steps: stop after this many steps of THIS call, saving
        last.npz mid-epoch as an interrupt would (used by tests of resume).
        Returns the history (list of per-epoch dicts).
        """
        cfg, p = self.config, self.progress
        if p.stopped_early or p.epoch >= cfg.epochs:
            if p.stopped_early:
                advice = "dev BLEU-4 had stopped improving; to train longer, start a new run (another --out)"
            elif cfg.lr_decay_to < 1:
                advice = ("its learning rate decayed over exactly these epochs; to train longer, start a "
                          "new run (another --out) with more --epochs")
            else:
                advice = "raise --epochs to train further"
            self.log(f"nothing to do: this run {'stopped early' if p.stopped_early else 'finished'} "
                     f"after epoch {p.epoch} ({advice})")
            return p.history
        if cfg.max_minutes is not None and p.elapsed >= cfg.max_minutes * 60:
            self.log(f"nothing to do: this run already trained its --max-minutes {cfg.max_minutes} "
                     f"({format_duration(p.elapsed)}); give a larger --max-minutes to go on")
            return p.history
        self.model.train()
        self.encoder.train()
        previous_handler = None
        if sys.platform != "win32" and _in_main_thread():
            previous_handler = signal.signal(signal.SIGINT, self._request_stop)
        steps_this_call = 0
        session_start = time.perf_counter()
        elapsed_before = p.elapsed
        last_log = session_start
        window_tokens, window_start = 0, session_start
        total_steps = cfg.epochs * self.steps_per_epoch
        steps_at_start = p.step
        try:
            while p.epoch < cfg.epochs:
                while p.batch < self.steps_per_epoch:
                    loss, tokens = self.train_step(p.epoch, p.batch)
                    p.batch += 1
                    p.step += 1
                    steps_this_call += 1
                    p.epoch_loss_sum += loss
                    p.epoch_tokens += tokens
                    window_tokens += tokens
                    now = time.perf_counter()
                    p.elapsed = elapsed_before + (now - session_start)
                    if p.step % 10 == 0:
                        p.loss_trace.append([p.step, p.epoch_loss_sum / p.batch])
                    if now - last_log >= cfg.log_every or p.batch == self.steps_per_epoch:
                        rate = window_tokens / max(now - window_start, 1e-9)
                        per_step = (now - session_start) / max(p.step - steps_at_start, 1)
                        eta = per_step * (total_steps - p.step)
                        if cfg.max_minutes is not None:
                            eta = min(eta, cfg.max_minutes * 60 - p.elapsed)
                        self.log(f"epoch {p.epoch + 1}/{cfg.epochs}  step {p.batch}/{self.steps_per_epoch}"
                                 f"  loss {p.epoch_loss_sum / p.batch:.3f}  {rate:,.0f} tokens/s"
                                 f"  lr {self.optimizer.lr:.2e}  ETA {format_duration(eta)}")
                        last_log, window_tokens, window_start = now, 0, now
                    out_of_time = cfg.max_minutes is not None and p.elapsed >= cfg.max_minutes * 60
                    if self._stop_requested or (stop_after_steps is not None
                                                and steps_this_call >= stop_after_steps):
                        self.save(self.last_path)
                        hint = f"; {self.resume_hint}" if self.resume_hint else ", saved"
                        self.log(f"stopped at epoch {p.epoch + 1}, step {p.batch}{hint} ({self.last_path})")
                        return p.history
                    if out_of_time and p.batch < self.steps_per_epoch:
                        self.log(f"--max-minutes {cfg.max_minutes} reached in epoch {p.epoch + 1}")
                        self._end_of_epoch(partial=True)
                        return p.history
                if self._end_of_epoch():
                    p.stopped_early = True
                    self.save(self.last_path)
                    break
                if cfg.max_minutes is not None and p.elapsed >= cfg.max_minutes * 60:
                    self.log(f"--max-minutes {cfg.max_minutes} reached")
                    break
            return p.history
        finally:
            if previous_handler is not None:
                signal.signal(signal.SIGINT, previous_handler)

    def _end_of_epoch(self, partial=False):
        """Validate, schedule, checkpoint; returns True when early stopping says stop."""
        cfg, p = self.config, self.progress
        start = time.perf_counter()
        bleus, captions = self.validate()
        bleu4 = bleus[3]
        record = {"epoch": p.epoch + 1, "steps": p.batch, "partial": partial,
                  "train_loss": p.epoch_loss_sum / max(p.batch, 1), "dev_bleu": bleus,
                  "lr": self.optimizer.lr, "elapsed": p.elapsed,
                  "validation_seconds": time.perf_counter() - start}
        p.history.append(record)
        improved = bleu4 > p.best_bleu
        if improved:
            p.best_bleu, p.best_epoch = bleu4, p.epoch + 1
        # Only whole epochs count for early stopping and the plateau rule: a run stopped by
        # --max-minutes inside an epoch (validated here so that best.npz exists) and resumed
        # later then takes exactly the steps of an uninterrupted run.
        if not partial:
            if bleu4 > p.best_whole_epoch_bleu:
                p.best_whole_epoch_bleu, p.epochs_since_best = bleu4, 0
            else:
                p.epochs_since_best += 1
            if cfg.lr_decay_to >= 1.0:   # a linear decay (lr_decay_to < 1) sets the rate itself
                self.scheduler.step(bleu4)
        sample = " ".join(captions[0]) if captions else ""
        self.log(f"epoch {p.epoch + 1} done: train loss {record['train_loss']:.3f}, dev BLEU-4 "
                 f"{100 * bleu4:.2f} (B1 {100 * bleus[0]:.1f}){' *best*' if improved else ''}, "
                 f"lr {self.optimizer.lr:.2e}, {format_duration(p.elapsed)} so far; "
                 f"e.g. \"{sample}\" ({self.dev_data.image_ids[0]})")
        stop = p.epochs_since_best >= cfg.patience
        if not partial:
            p.epoch += 1
            p.batch, p.epoch_loss_sum, p.epoch_tokens = 0, 0.0, 0
        if improved:
            self.save(self.best_path)
        self.save(self.last_path)
        self._draw_curves()
        if stop:
            self.log(f"early stopping: no better dev BLEU-4 for {cfg.patience} epochs "
                     f"(best {100 * p.best_bleu:.2f} at epoch {p.best_epoch})")
        return stop

    def _draw_curves(self):
        try:
            save_training_curves(os.path.join(self.out_dir, "curves.png"), self.progress.loss_trace,
                                 self.progress.history, self.steps_per_epoch)
        except OSError as exc:  # a plot must never kill a training run
            self.log(f"warning: could not write curves.png: {exc}")


def _in_main_thread():
    import threading
    return threading.current_thread() is threading.main_thread()


# ---------------------------------------------------------------- the curve picture

def save_training_curves(path, loss_trace, history, steps_per_epoch, size=(720, 300)):
    """Two panels drawn with Pillow: training loss against epochs, dev BLEU-4 (x100) per epoch.

    loss_trace: [[step, running mean loss of the epoch], ...]; history: the
    per-epoch records of the Trainer. Written atomically (temp file + rename).
    """
    from PIL import Image, ImageDraw

    width, height = size
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    panels = [
        ("train loss (running mean per epoch)", [(s / steps_per_epoch, v) for s, v in loss_trace],
         (40, 160, 40)),
        ("dev BLEU-4 x100", [(r["epoch"] - 1 + r["steps"] / steps_per_epoch, 100 * r["dev_bleu"][3])
                             for r in history], (40, 80, 220)),
    ]
    panel_width = width // 2
    for k, (title, points, colour) in enumerate(panels):
        left, top, right, bottom = k * panel_width + 50, 25, (k + 1) * panel_width - 15, height - 35
        draw.rectangle([left, top, right, bottom], outline=(120, 120, 120))
        draw.text((left, 6), title, fill=(0, 0, 0))
        draw.text((left, bottom + 8), "epoch", fill=(90, 90, 90))
        points = [(x, y) for x, y in points if math.isfinite(y)]
        if not points:
            continue
        xs, ys = [x for x, _ in points], [y for _, y in points]
        x_max = max(max(xs), 1e-9)
        y_lo, y_hi = min(ys), max(ys)
        if y_hi - y_lo < 1e-9:
            y_lo, y_hi = y_lo - 1, y_hi + 1
        to_px = lambda x, y: (left + (right - left) * x / x_max,  # noqa: E731
                              bottom - (bottom - top) * (y - y_lo) / (y_hi - y_lo))
        draw.text((left - 45, top), f"{y_hi:.3g}", fill=(90, 90, 90))
        draw.text((left - 45, bottom - 10), f"{y_lo:.3g}", fill=(90, 90, 90))
        draw.text((right - 30, bottom + 8), f"{x_max:.3g}", fill=(90, 90, 90))
        pixels = [to_px(x, y) for x, y in points]
        if len(pixels) > 1:
            draw.line(pixels, fill=colour, width=2)
        for px, py in pixels if len(pixels) < 60 else pixels[-1:]:
            draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=colour)
    with atomic_write(path, "wb") as f:
        image.save(f, format="PNG")
    return path
