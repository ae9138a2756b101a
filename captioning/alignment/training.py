"""Training the aligner: Adam on the ranking loss, dev recall after each epoch, checkpoints.

out_dir gets best.npz (best dev recall sum) and last.npz (for --resume), both
written atomically. Batches are deterministic in (seed, epoch), so a resumed
run continues with exactly the batches it would have seen.
"""
import math
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Optional

import numpy

from nn import backend
from nn.optim import Adam, clip_grad_norm

from ..progress import format_duration
from ..training import TrainingDiverged
from .checkpoint import load_aligner, save_aligner
from .data import encode_sentences, epoch_batches
from .retrieval import encode_images, recall_metrics, recall_sum, sentence_scores


@dataclass
class AlignConfig:
    epochs: int = 15
    batch_size: int = 100
    lr: float = 2e-4
    clip: float = 5.0
    max_words: int = 20
    patience: int = 3                 # early stopping: epochs without a better dev recall sum
    lr_factor: float = 0.5            # the learning rate is multiplied by this after such an epoch
    lr_decay: float = 1.0             # ... and by this after every epoch
    weight_decay: float = 0.0         # L2 on every weight matrix (Adam's coupled weight decay)
    hard_warmup: int = 0              # a "hardest" model trains on the sum of hinges for these epochs
    seed: int = 0
    max_minutes: Optional[float] = None
    val_images: Optional[int] = None  # dev recall on the first N dev images only
    log_every: float = 10.0


@dataclass
class AlignProgress:
    epoch: int = 0
    batch: int = 0
    step: int = 0
    elapsed: float = 0.0
    best_rsum: float = -1.0
    best_epoch: int = -1
    epochs_since_best: int = 0
    history: list = field(default_factory=list)
    stopped: str = ""                 # "", "early", "time", "interrupted"


class AlignTrainer:
    """Trains `model` (and a trainable encoder) on data.splits["train"], validates on "dev"."""

    def __init__(self, model, encoder, vocabulary, data, config, out_dir, log=print):
        self.model, self.encoder, self.vocabulary = model, encoder, vocabulary
        self.data, self.config, self.out_dir, self.log = data, config, os.fspath(out_dir), log
        self.train = data.splits["train"]
        self.sentences = encode_sentences(self.train.references, vocabulary, config.max_words)
        dev = data.splits["dev"].head(config.val_images)
        self.dev, self.dev_sentences = dev, encode_sentences(dev.references, vocabulary, config.max_words)
        self.optimizer = Adam(list(self.named_parameters()), lr=config.lr,
                              weight_decay=config.weight_decay)
        self.progress = AlignProgress()
        os.makedirs(self.out_dir, exist_ok=True)

    def named_parameters(self):
        yield from self.model.named_parameters("model")
        yield from self.encoder.named_parameters("encoder")

    def path(self, name):
        return os.path.join(self.out_dir, name)

    def save(self, name):
        training = {"config": asdict(self.config), "progress": asdict(self.progress)}
        return save_aligner(self.path(name), self.model, self.encoder, self.vocabulary, self.data.spec,
                            optimizer=self.optimizer, training=training)

    def resume(self, path):
        ckpt = load_aligner(path, dtype=self.model.dtype)
        if ckpt.model.config != self.model.config or ckpt.vocabulary != self.vocabulary:
            from ..models import ConfigMismatchError
            raise ConfigMismatchError(f"{path}: another model or vocabulary than this run's")
        self.model.load_state_dict(ckpt.model.state_dict())
        if self.encoder.trainable:
            self.encoder.load_state_dict(ckpt.encoder.state_dict())
        self.optimizer.load_state_dict(ckpt.optimizer_state)
        self.progress = AlignProgress(**ckpt.training["progress"])
        self.progress.stopped = ""
        return self

    # ------------------------------------------------------------ one step
    def step(self, rows):
        self.model.train()
        self.model.dropout_seed = self.config.seed * 1_000_003 + self.progress.step   # resumes exactly
        self.model.warming_up = self.progress.epoch < self.config.hard_warmup
        words, mask = self.sentences.batch(rows)
        images = self.sentences.image[rows]
        grid = self.encoder.encode(self.train.inputs[images], "grid", self.model.dtype)
        loss, dgrid = self.model.loss(grid, backend.asarray(words), backend.asarray(mask, dtype=self.model.dtype),
                                     need_dgrid=self.encoder.trainable)
        if self.encoder.trainable:
            self.encoder.backward(dgrid)
        norm = clip_grad_norm(list(self.named_parameters()), self.config.clip)
        if not (math.isfinite(loss) and math.isfinite(norm)):
            raise TrainingDiverged(f"loss {loss} / gradient norm {norm} at step {self.progress.step}")
        self.optimizer.step()
        return loss

    def validate(self):
        """Recall metrics on the dev images (the paper's protocol, see retrieval)."""
        self.model.eval()
        return evaluate_retrieval(self.model, self.encoder, self.dev, self.dev_sentences)

    # ------------------------------------------------------------ the loop
    def fit(self):
        """Train until the epochs, the time limit or early stopping end the run; a Ctrl-C
        saves last.npz (resumable) before it propagates. Returns the progress."""
        try:
            self._loop()
        except KeyboardInterrupt:
            self.progress.stopped = "interrupted"
            self.save("last.npz")
            raise
        self.save("last.npz")
        return self.progress

    def _out_of_time(self):
        limit = self.config.max_minutes
        return limit is not None and self.progress.elapsed >= 60 * limit

    def _loop(self):
        c, p = self.config, self.progress
        start = time.time() - p.elapsed
        last_log, losses = time.time(), []
        while p.epoch < c.epochs and not p.stopped:
            batches = epoch_batches(self.sentences, len(self.train), c.batch_size, c.seed, p.epoch)
            while p.batch < len(batches) and not self._out_of_time():
                losses.append(self.step(batches[p.batch]))
                p.batch, p.step = p.batch + 1, p.step + 1
                p.elapsed = time.time() - start
                if time.time() - last_log >= c.log_every:
                    last_log = time.time()
                    self.log(f"epoch {p.epoch + 1}/{c.epochs} batch {p.batch}/{len(batches)} "
                             f"loss {numpy.mean(losses[-50:]):.3f} | {format_duration(p.elapsed)}")
            if self._out_of_time():
                p.stopped = "time"
                if not losses:          # resumed after the limit: nothing new to validate
                    break
            if p.batch >= len(batches):
                p.epoch, p.batch = p.epoch + 1, 0
            self._end_of_epoch(losses)
            losses = []

    def _end_of_epoch(self, losses):
        p = self.progress
        metrics = self.validate()
        rsum = recall_sum(metrics)
        p.history.append({"epoch": p.epoch, "step": p.step, "loss": float(numpy.mean(losses)) if losses else None,
                          "dev": metrics, "rsum": rsum, "elapsed": p.elapsed})
        better = rsum > p.best_rsum
        if better:
            p.best_rsum, p.best_epoch, p.epochs_since_best = rsum, p.epoch, 0
        a, s = metrics["annotation"], metrics["search"]
        self.log(f"after epoch {p.epoch}{' (part)' if p.batch else ''}: dev annotation R@1/5/10 "
                 f"{a['R@1']:.1f}/{a['R@5']:.1f}/{a['R@10']:.1f} med {a['median_rank']:g}, search "
                 f"{s['R@1']:.1f}/{s['R@5']:.1f}/{s['R@10']:.1f} med {s['median_rank']:g}"
                 f"{' (best)' if better else ''} | {format_duration(p.elapsed)}")
        if p.batch == 0:
            self.optimizer.lr *= self.config.lr_decay
        if not better and p.batch == 0:
            p.epochs_since_best += 1
            self.optimizer.lr *= self.config.lr_factor     # a plateau: take smaller steps
            self.log(f"no better dev recall: learning rate now {self.optimizer.lr:.2g}")
        if p.epochs_since_best >= self.config.patience and not p.stopped:
            p.stopped = "early"
            self.log(f"early stop: no better dev recall in {self.config.patience} epochs")
        if better:
            self.save("best.npz")
        self.save("last.npz")


def evaluate_retrieval(model, encoder, data, sentences, chunk=20):
    """Recall metrics of `model` on the images of `data` and their `sentences`."""
    regions, whole = encode_images(model, encoder, data.inputs)
    return recall_metrics(sentence_scores(model, regions, sentences, chunk=chunk, image_vectors=whole),
                          sentences.image)
