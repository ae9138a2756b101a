"""Training a captioner: teacher forcing, Adam, clipping, validation by BLEU-4, checkpoints.

One epoch visits every (image, caption) pair of the train split once, in an
order drawn from the seed (captioning.data.batches). Each step:

    features = encoder(images of the batch)          # cached features, or a small CNN
    loss, grads = model.forward_backward(features, captions)   # teacher forcing
    (trainable encoder: a small CNN, or the fine-tuned top of EfficientNet-Lite0
    on cached activations: its backward pass from d loss / d features)
    clip the global gradient norm; Adam step

After each epoch the model CAPTIONS the dev images (greedy or beam search) and
is scored by BLEU-4 against their reference captions; this, not the
teacher-forced loss, drives the learning-rate decay on plateau (unless
`lr_decay_to` < 1 sets a linear decay instead), early stopping and the choice
of `best.npz`. `last.npz` holds the latest state.

Reproducibility and exact resume: every random number of a run comes from the
seed and a counter, never from a generator that runs on in the background:
- the batches of epoch e: numpy default_rng([seed, e]) (data.batches.epoch_batches);
- the dropout mask of step s: a seed from SeedSequence([seed, 1, s]).
A checkpoint stores epoch, step and the position inside the epoch, so
`--resume` recreates exactly the random numbers the uninterrupted run would
have used (tests check that the parameters come out identical).

A non-finite loss or gradient norm, or weights or buffers no longer finite
when saving (a batchnorm's running variance, which no gradient checks), stop
training with a clear message; the checkpoints on disk are then the last
good ones (nothing is written after the bad step).
"""
import contextlib
import math
import os
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Optional

import numpy

from nn import backend
from nn.optim import Adam, ReduceOnPlateau, clip_grad_norm
from nn.persist import non_finite_arrays, remove_stale_temporaries

from .checkpoint import load_checkpoint, save_checkpoint
from .curves_png import save_training_curves
from .data.batches import encode_captions, epoch_batches, num_batches, take_batch
from .generation import evaluate_captions, generate_captions
from .models import ConfigMismatchError
from .progress import StepMeter, format_duration

__all__ = ["TrainConfig", "Trainer", "TrainingDiverged"]


class TrainingDiverged(RuntimeError):
    """The loss or the gradients became NaN or infinite."""


@dataclass
class TrainConfig:
    """Hyperparameters of a run (saved in every checkpoint)."""
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3                 # Adam learning rate
    encoder_lr: Optional[float] = None   # a trainable encoder's rate (None: lr); every schedule scales
                                         # it with lr (nn.optim lr_scales)
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
    features_on_device: bool = False      # CuPy + cached features: copy them to the GPU once (see Trainer)

    @classmethod
    def from_dict(cls, data):
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


class _Trainable:
    """Decoder and encoder parameters as one tree (what the optimizer and clipping see)."""

    def __init__(self, model, encoder):
        self.model, self.encoder = model, encoder

    def named_parameters(self):
        yield from self.model.named_parameters("decoder")
        yield from self.encoder.named_parameters("encoder")


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

    train, dev: CaptionSplits whose `inputs` the encoder reads (pixels or cached
    features). out_dir gets best.npz, last.npz and curves.png. `log` is a
    print-like function for progress lines.
    """
    score_name = "BLEU-4"          # the dev score that picks best.npz (captioning.scst: CIDEr-D)
    run_kind = "cross-entropy"     # saved in checkpoints: --resume continues only a run of the same kind

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
        self.table = encode_captions(train, vocabulary, config.max_words)   # every (image, caption) pair
        self.params = _Trainable(model, encoder)
        scales = {"encoder": config.encoder_lr / config.lr} if config.encoder_lr is not None else None
        self.optimizer = Adam(self.params, lr=config.lr, weight_decay=config.weight_decay, lr_scales=scales)
        self.scheduler = ReduceOnPlateau(self.optimizer, factor=config.lr_factor,
                                         patience=config.lr_patience, mode="max")
        self.progress = _Progress()
        self._stop_requested = False
        self._batches = (None, None)   # (epoch, its batches): drawn once per epoch
        self._device_inputs = self._features_on_device(train.inputs) if config.features_on_device else None
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
        return num_batches(len(self.table), self.config.batch_size, self.config.length_buckets)

    # ------------------------------------------------------------ checkpoints
    def _training_state(self):
        return {"kind": self.run_kind, "config": asdict(self.config), "progress": asdict(self.progress),
                "scheduler": self.scheduler.state_dict(), "data": self.data_spec,
                "rng": {"seed": self.config.seed,
                        "scheme": "batches of epoch e: default_rng([seed, e]), see Trainer.epoch_batches; "
                                  "dropout of step s: SeedSequence([seed, 1, s])"}}

    def save(self, path):
        """Write a checkpoint (refused, as diverged, when an array is no longer finite)."""
        broken = list(non_finite_arrays({**{"decoder/" + k: v for k, v in self.model.params.items()},
                                         **{"encoder/" + k: v for k, v in self.encoder.state_dict().items()}}))
        if broken:
            raise TrainingDiverged(
                f"{broken[0]} became non-finite (NaN or inf) by step {self.progress.step}"
                f"{f' (and {len(broken) - 1} more arrays)' if len(broken) > 1 else ''}; it was not saved, and "
                f"the last good checkpoints are untouched in {self.out_dir}. Try a lower --lr or a smaller --clip.")
        return save_checkpoint(path, self.model, self.vocabulary, self.encoder.spec,
                               encoder_state=self.encoder.state_dict(), optimizer=self.optimizer,
                               training=self._training_state())

    def resume(self, path):
        """Continue from a checkpoint written by this trainer (normally last.npz)."""
        ckpt = load_checkpoint(path, dtype=self.model.dtype)
        saved_kind = ckpt.training.get("kind", "cross-entropy")   # checkpoints from before self-critical training
        if "progress" in ckpt.training and saved_kind != self.run_kind:
            hint = " (train --scst --init CKPT --resume)" if saved_kind == "self-critical" else " (without --scst)"
            raise ConfigMismatchError(f"{path} holds a {saved_kind} run, this is a {self.run_kind} run: resume it "
                                      f"as it was started{hint}")
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
        self.progress = type(self.progress)(**state["progress"])
        return self

    # Settings that decide the batches, the random numbers or the updates: a resumed run
    # must use the checkpoint's, or it would silently become another run. (Epochs,
    # patience, time limit and validation may change, e.g. to train longer.)
    RESUME_FIXED = ("batch_size", "seed", "length_buckets", "max_words", "lr", "encoder_lr", "lr_decay_to", "clip",
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
        """The caption rows of every batch of `epoch` (captioning.data.batches.epoch_batches)."""
        if self._batches[0] != epoch:
            cfg = self.config
            self._batches = (epoch, epoch_batches(self.table, cfg.batch_size, cfg.seed, epoch, cfg.length_buckets))
        return self._batches[1]

    def _features_on_device(self, inputs):
        """The training split's cached features as ONE array on the GPU, so that a step gathers its
        batch there instead of on the host followed by a copy (issue 17; not yet run on a GPU,
        hence off by default: --features-on-device). None, and the host path, on NumPy, for a
        trainable encoder (pixels), or when the features need more than half the free GPU memory."""
        free = backend.device_memory_free()
        if free is None or self.encoder.trainable:
            return None
        # With --features the inputs are a view of the cache's rows (captioning.features._Rows), not an array.
        nbytes = int(numpy.prod(inputs.shape)) * numpy.dtype(inputs.dtype).itemsize
        if nbytes > free // 2:
            self.log(f"--features-on-device: the training features ({nbytes / 2 ** 30:.1f} GiB) need more "
                     f"than half of the free GPU memory ({free / 2 ** 30:.1f} GiB); they stay on the host")
            return None
        if not isinstance(inputs, numpy.ndarray):     # the cache's rows, read once in the split's order
            inputs = inputs[numpy.arange(len(inputs))]
        return backend.asarray(inputs)          # keeps the cache's dtype (float16 takes half the memory)

    def train_inputs(self, images):
        """The inputs of these training images ((B,) NumPy ints): from the GPU copy when
        --features-on-device made one, else gathered on the host."""
        if self._device_inputs is not None:
            return self._device_inputs[backend.asarray(images)]
        return self.train_data.inputs[images]

    def train_step(self, epoch, batch):
        """One optimizer step; returns (loss, number of target tokens)."""
        images, captions = take_batch(self.table, self.epoch_batches(epoch)[batch])
        # each image of the batch is encoded once, however many of its captions were drawn
        unique, inverse = numpy.unique(images, return_inverse=True)
        encoded = self.encoder.encode(self.train_inputs(unique), self.model.feature_kind, self.model.dtype)
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
    def dev_loss(self):
        """Teacher-forced loss on every caption of the validation images (no dropout, no update).

        In the units of the training loss (summed over a caption's words,
        averaged over captions), so the two can be drawn together: a dev loss
        rising while the training loss falls is overfitting.
        """
        dev = self.dev_data.head(self.config.val_images)
        table = encode_captions(dev, self.vocabulary, self.config.max_words)
        self.model.eval()
        self.encoder.eval()
        total = 0.0
        for start in range(0, len(table), self.config.batch_size):
            images, captions = take_batch(table, numpy.arange(start, min(start + self.config.batch_size, len(table))))
            unique, inverse = numpy.unique(images, return_inverse=True)
            encoded = self.encoder.encode(dev.inputs[unique], self.model.feature_kind, self.model.dtype)
            loss = self.model.forward_loss(encoded[backend.asarray(inverse)], backend.asarray(captions))
            total += loss * len(captions)
        self.model.train()
        self.encoder.train()
        return total / max(len(table), 1)

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
        if self._nothing_to_do():
            return self.progress.history
        self.model.train()
        self.encoder.train()
        with self._ctrl_c_finishes_the_step():
            self._train_epochs(stop_after_steps)
        return self.progress.history

    def _nothing_to_do(self):
        """True (and say why) for a run that finished, stopped early or used its --max-minutes."""
        cfg, p = self.config, self.progress
        if p.stopped_early or p.epoch >= cfg.epochs:
            if p.stopped_early:
                advice = (f"dev {self.score_name} had stopped improving; to train longer, start a new run "
                          "(another --out)")
            elif cfg.lr_decay_to < 1:
                advice = ("its learning rate decayed over exactly these epochs; to train longer, start a "
                          "new run (another --out) with more --epochs")
            else:
                advice = "raise --epochs to train further"
            self.log(f"nothing to do: this run {'stopped early' if p.stopped_early else 'finished'} "
                     f"after epoch {p.epoch} ({advice})")
            return True
        if self._out_of_time():
            self.log(f"nothing to do: this run already trained its --max-minutes {cfg.max_minutes} "
                     f"({format_duration(p.elapsed)}); give a larger --max-minutes to go on")
            return True
        return False

    @contextlib.contextmanager
    def _ctrl_c_finishes_the_step(self):
        """While training, Ctrl-C asks for a stop after the current step (see _request_stop)."""
        previous_handler = None
        if sys.platform != "win32" and threading.current_thread() is threading.main_thread():
            previous_handler = signal.signal(signal.SIGINT, self._request_stop)
        try:
            yield
        finally:
            if previous_handler is not None:
                signal.signal(signal.SIGINT, previous_handler)

    def _out_of_time(self):
        return self.config.max_minutes is not None and self.progress.elapsed >= self.config.max_minutes * 60

    def _train_epochs(self, stop_after_steps):
        cfg, p = self.config, self.progress
        meter = StepMeter(cfg.epochs * self.steps_per_epoch, p.step, cfg.log_every)
        elapsed_before, steps_this_call = p.elapsed, 0
        while p.epoch < cfg.epochs:
            while p.batch < self.steps_per_epoch:
                self._one_step(meter, elapsed_before)
                steps_this_call += 1
                if self._stop_inside_epoch(stop_after_steps is not None and steps_this_call >= stop_after_steps):
                    return
            if self._end_of_epoch():
                p.stopped_early = True
                self.save(self.last_path)
                return
            if self._out_of_time():
                self.log(f"--max-minutes {cfg.max_minutes} reached")
                return

    def _one_step(self, meter, elapsed_before):
        """A training step, its bookkeeping, and a progress line when one is due."""
        cfg, p = self.config, self.progress
        loss, tokens = self.train_step(p.epoch, p.batch)
        p.batch += 1
        p.step += 1
        p.epoch_loss_sum += loss
        p.epoch_tokens += tokens
        meter.add(tokens)
        p.elapsed = elapsed_before + meter.session_seconds()
        if p.step % 10 == 0:
            p.loss_trace.append([p.step, p.epoch_loss_sum / p.batch])
        if meter.due(end_of_epoch=p.batch == self.steps_per_epoch):
            left = cfg.max_minutes * 60 - p.elapsed if cfg.max_minutes is not None else None
            rate, eta = meter.report(p.step, seconds_left=left)
            self.log(f"epoch {p.epoch + 1}/{cfg.epochs}  step {p.batch}/{self.steps_per_epoch}"
                     f"  loss {p.epoch_loss_sum / p.batch:.3f}  {rate:,.0f} tokens/s"
                     f"  lr {self._lr_text()}  ETA {format_duration(eta)}")

    def _lr_text(self):
        """'1.00e-03', or '1.00e-03 (encoder 1.00e-04)' when the encoder has its own rate."""
        text = f"{self.optimizer.lr:.2e}"
        if self.config.encoder_lr is not None and self.encoder.trainable:
            text += f" (encoder {self.optimizer.lr_of('encoder'):.2e})"
        return text

    def _stop_inside_epoch(self, step_limit_reached):
        """The stop rules checked after every step; True when training stops here.

        Ctrl-C (or a caller's step limit) saves last.npz to resume from; the
        time limit inside an epoch validates the partial epoch so best.npz exists.
        """
        p = self.progress
        if self._stop_requested or step_limit_reached:
            self.save(self.last_path)
            hint = f"; {self.resume_hint}" if self.resume_hint else ", saved"
            self.log(f"stopped at epoch {p.epoch + 1}, step {p.batch}{hint} ({self.last_path})")
            return True
        if self._out_of_time() and p.batch < self.steps_per_epoch:
            self.log(f"--max-minutes {self.config.max_minutes} reached in epoch {p.epoch + 1}")
            self._end_of_epoch(partial=True)
            return True
        return False

    # Where the best dev scores live in the progress record (the names are part of the checkpoint
    # format, so a self-critical run keeps its own: best_cider, best_whole_epoch_cider).
    best_fields = ("best_bleu", "best_whole_epoch_bleu")

    def _validate_epoch(self, partial):
        """Validate after an epoch: (dev score that picks best.npz, the epoch's history record, dev captions)."""
        p = self.progress
        bleus, captions = self.validate()
        record = {"epoch": p.epoch + 1, "steps": p.batch, "partial": partial,
                  "train_loss": p.epoch_loss_sum / max(p.batch, 1), "dev_loss": self.dev_loss(), "dev_bleu": bleus,
                  "lr": self.optimizer.lr, "elapsed": p.elapsed}
        return bleus[3], record, captions

    def _epoch_summary(self, record, improved):
        """The scores of the 'epoch N done: ...' line."""
        bleus = record["dev_bleu"]
        return (f"train loss {record['train_loss']:.3f}, dev loss {record['dev_loss']:.3f}, dev BLEU-4 "
                f"{100 * bleus[3]:.2f} (B1 {100 * bleus[0]:.1f}){' *best*' if improved else ''}, "
                f"lr {self._lr_text()}")

    def _start_epoch_sums(self):
        """Zero the sums of the epoch that starts (the self-critical trainer adds its rewards)."""
        p = self.progress
        p.batch, p.epoch_loss_sum, p.epoch_tokens = 0, 0.0, 0

    def _end_of_epoch(self, partial=False):
        """Validate, schedule, checkpoint; returns True when early stopping says stop."""
        cfg, p = self.config, self.progress
        start = time.perf_counter()
        score, record, captions = self._validate_epoch(partial)
        record["validation_seconds"] = time.perf_counter() - start
        p.history.append(record)
        best_any, best_whole = self.best_fields
        improved = score > getattr(p, best_any)
        if improved:
            setattr(p, best_any, score)
            p.best_epoch = p.epoch + 1
        # Only whole epochs count for early stopping and the plateau rule: a run stopped by
        # --max-minutes inside an epoch (validated here so that best.npz exists) and resumed
        # later then takes exactly the steps of an uninterrupted run.
        if not partial:
            if score > getattr(p, best_whole):
                setattr(p, best_whole, score)
                p.epochs_since_best = 0
            else:
                p.epochs_since_best += 1
            if cfg.lr_decay_to >= 1.0:   # a linear decay (lr_decay_to < 1) sets the rate itself
                self.scheduler.step(score)
        sample = " ".join(captions[0]) if captions else ""
        self.log(f"epoch {p.epoch + 1} done: {self._epoch_summary(record, improved)}, "
                 f"{format_duration(p.elapsed)} so far; e.g. \"{sample}\" ({self.dev_data.image_ids[0]})")
        stop = p.epochs_since_best >= cfg.patience
        if not partial:
            p.epoch += 1
            self._start_epoch_sums()
        if improved:
            self.save(self.best_path)
        self.save(self.last_path)
        self._draw_curves()
        if stop:
            self.log(f"early stopping: no better dev {self.score_name} for {cfg.patience} epochs "
                     f"(best {100 * getattr(p, best_any):.2f} at epoch {p.best_epoch})")
        return stop

    def _draw_curves(self):
        try:
            save_training_curves(os.path.join(self.out_dir, "curves.png"), self.progress.loss_trace,
                                 self.progress.history, self.steps_per_epoch)
        except OSError as exc:  # a plot must never kill a training run
            self.log(f"warning: could not write curves.png: {exc}")
