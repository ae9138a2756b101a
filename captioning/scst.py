"""Self-critical sequence training (Rennie et al. 2017): REINFORCE with CIDEr-D as the reward.

Cross-entropy training teaches a captioner the next word of a human caption
given the TRUE previous words; at test time it feeds on its own words and is
judged by a metric. Self-critical training optimises the metric of the
model's own captions directly. The captioner is a policy: a caption
w = w_1..w_L (the end token w_L included: it decides where the caption
stops) is drawn word by word from p(w_t | w_<t, image), and earns the reward
r(w) = CIDEr-D of w against the image's reference captions. The gradient of
the expected reward J = E_w[r(w)] is (REINFORCE)

    grad J = E_w[(r(w) - b) grad log p(w)],   log p(w) = sum_t log p(w_t | w_<t, image),

for any baseline b that does not depend on the sampled w (it changes the
variance, not the mean). Rennie et al.'s baseline is the reward of the
model's own GREEDY caption: a sample better than what the model would say
at test time is made more likely, a worse one less likely. The "new SCST"
baseline (--scst-baseline samples) draws K captions per image and gives each
the mean reward of the other K - 1 (independent of it, so still unbiased).

One step on a batch of images (SelfCriticalTrainer.train_step):

    features = encoder(images)                      the encoder is not trained here
    greedy   = greedy_decode(model, features)       the baseline (no gradient)
    samples  = sample_captions(model, features, K)  K captions per image, end token included
    r, b     = CIDEr-D(samples), CIDEr-D(greedy) or the mean of the other samples
    loss, grads = model.forward_backward(features, [<START>, samples], token_weights = (r - b) * mask)
    clip, Adam step

The policy gradient by hand: -(r - b) log p(w) summed over the sampled
tokens has, at step t, the gradient (r - b) * (softmax(scores_t) -
onehot(w_t)) w.r.t. the scores: the teacher-forced cross-entropy gradient on
the sampled caption, weighted by its advantage (nn.losses.policy_gradient_loss).
So the models' own teacher-forced forward/backward does the work, given the
sampled captions and per-token weights. Dropout is off while sampling and in
the gradient pass: the gradient is then that of the policy that sampled.

The rewards use CIDEr-D with document frequencies of the TRAINING references
(metrics.CiderD, computed once); validation scores the greedy dev captions
with the usual CIDEr-D of the dev set, which picks best.npz and drives early
stopping.

Random numbers: the images of epoch e come from default_rng([seed, 2, e]),
the samples of step s from default_rng([seed, 3, s]) (NumPy on either
backend), so --resume continues a run exactly.
"""
import itertools
import math
import os
import time
from dataclasses import dataclass, field

import numpy

from nn import backend
from nn.optim import Adam, ReduceOnPlateau, clip_grad_norm

from .curves_png import save_scst_curves
from .decoding import greedy_decode
from .generation import evaluate_captions, generate_captions
from .metrics import CiderD, cider_d
from .progress import format_duration
from .training import TrainConfig, Trainer, TrainingDiverged, _Progress

__all__ = ["BASELINES", "SCSTConfig", "SelfCriticalTrainer", "advantages", "every_caption",
           "sample_captions", "sampled_caption_batch", "scst_defaults"]

BASELINES = ("greedy", "samples")


def scst_defaults(dataset_name):
    """Default options of a self-critical run on a data set (its options not given take these).

    Flickr8k (and the larger sets): Rennie et al.'s Adam learning rate 5e-5,
    50 images a step. Shapes: a higher rate, so that a short run shows it.
    """
    if dataset_name == "shapes":
        return dict(epochs=2, batch_size=16, lr=2e-4, lr_decay_to=1.0, max_minutes=2.0)
    return dict(epochs=10, batch_size=50, lr=5e-5, lr_decay_to=1.0, max_minutes=0)


# ------------------------------------------------------------------ sampling

def sample_captions(model, features, max_length, rng, samples=1):
    """Draw captions from the model's own distribution, word by word (batched).

    Every row draws its next word from p(. | words so far, image) by
    inverse-CDF sampling with a uniform number from `rng`, a NumPy Generator
    (so one seed gives the same captions on the CPU and the GPU, up to
    rounding). A row stops at its first <END>, which counts as one of its
    tokens; a row that never draws <END> has max_length tokens. Any word may
    be drawn, <NULL> and <START> included (a trained model gives them almost
    no probability): the gradient pass must then count them, so the rows'
    lengths, not the padding id, say which tokens are real.

    Inputs:
    - model: a CaptionModel (init_decode_state / decode_step), in eval mode
    - features: the images' features, leading axis N
    - max_length: the most tokens per caption, <END> included
    - rng: numpy.random.Generator; a call draws max_length * N * K numbers
      from it, however early the captions end
    - samples: K, captions per image
    Returns a tuple of:
    - tokens: numpy int64 (N * K, T), T <= max_length the steps taken; row
      i * K + k is sample k of image i; entries past a row's length are null_id
    - lengths: numpy int64 (N * K,), tokens per row (<END> included), >= 1
    """
    state = model.init_decode_state(features)
    xp = backend.get_array_module(*state.values())
    if samples > 1:
        state = {key: xp.repeat(value, samples, axis=0) for key, value in state.items()}
    rows = len(next(iter(state.values())))
    tokens = numpy.full((rows, max_length), model.null_id, dtype=numpy.int64)
    lengths = numpy.zeros(rows, dtype=numpy.int64)
    words = xp.full(rows, model.start_id, dtype=xp.int64)
    active = numpy.arange(rows)            # the rows still in the decoding batch
    live = numpy.ones(rows, dtype=bool)    # ... and which of them have not drawn <END> yet
    # Every row's number for every step, sent to the device once (an upload per step could wait
    # for the step's kernels); uniforms[s, r] is the one row r draws at step s, so dropping
    # finished rows (their columns) changes no caption.
    uniforms = backend.asarray(rng.random((max_length, rows)), dtype=model.dtype)
    for step in range(max_length):
        log_probs, state, _ = model.decode_step(words, state)
        cdf = xp.cumsum(xp.exp(log_probs), axis=1)                          # (rows in the batch, V)
        # word j when cdf[j - 1] < u * total <= cdf[j] (the count of cdf entries below u * total): probability p_j
        words = xp.minimum((cdf < uniforms[step][:, None] * cdf[:, -1:]).sum(axis=1), log_probs.shape[1] - 1)
        chosen = backend.to_numpy(words)
        tokens[active[live], step] = chosen[live]
        lengths[active[live]] += 1
        live &= chosen != model.end_id
        if not live.any():
            return tokens[:, :step + 1], lengths
        if (~live).sum() * 8 >= len(live):   # an eighth finished: drop them, later steps get cheaper
            keep = numpy.nonzero(live)[0]
            keep_rows = backend.asarray(keep)
            state = {key: xp.take(value, keep_rows, axis=0) for key, value in state.items()}
            words, active, live = xp.take(words, keep_rows), active[keep], live[keep]
            uniforms = xp.take(uniforms, keep_rows, axis=1)
    return tokens, lengths


def sampled_caption_batch(tokens, lengths, start_id, null_id):
    """Teacher-forcing input for the gradient pass over sampled captions.

    Inputs: tokens (M, T) and lengths (M,) from `sample_captions`.
    Returns a tuple of:
    - captions: int64 (M, T + 1), <START> then the sampled tokens, null_id after each row's length
    - mask: bool (M, T), True on each row's sampled tokens (the end token included)
    """
    mask = numpy.arange(tokens.shape[1])[None, :] < lengths[:, None]
    captions = numpy.full((tokens.shape[0], tokens.shape[1] + 1), null_id, dtype=numpy.int64)
    captions[:, 0] = start_id
    captions[:, 1:][mask] = tokens[mask]
    return captions, mask


def advantages(sample_rewards, greedy_rewards, samples, baseline):
    """The advantage r - b of every sampled caption.

    Inputs:
    - sample_rewards: (N * K,) rewards; row i * K + k is sample k of image i
    - greedy_rewards: (N,) rewards of the greedy captions (used by "greedy")
    - samples: K
    - baseline: "greedy" (Rennie et al.: b = the greedy caption's reward) or
      "samples" (b = the mean reward of the image's OTHER K - 1 samples; K >= 2)
    Returns: (advantages (N * K,), baselines (N * K,)) float64
    """
    rewards = numpy.asarray(sample_rewards, dtype=numpy.float64).reshape(-1, samples)
    if baseline == "greedy":
        base = numpy.repeat(numpy.asarray(greedy_rewards, dtype=numpy.float64), samples).reshape(-1, samples)
    elif baseline == "samples":
        if samples < 2:
            raise ValueError("the 'samples' baseline needs at least 2 samples per image")
        base = (rewards.sum(axis=1, keepdims=True) - rewards) / (samples - 1)
    else:
        raise ValueError(f"unknown baseline {baseline!r}: choose one of {BASELINES}")
    return (rewards - base).reshape(-1), base.reshape(-1)


def every_caption(vocab_size, end_id, max_length):
    """Every token sequence sample_captions can draw, for checking the policy gradient exactly.

    Any words but <END> (<NULL> and <START> too: the sampler does not forbid them) then
    <END>, or max_length words without it. Only for tiny vocabularies: there are
    about (vocab_size - 1) ** max_length of them.

    Returns:
    - tokens: (S, max_length) int64, zero-padded after each sequence's last token.
    - lengths: (S,) number of tokens of each sequence, its <END> included.
    """
    words = [w for w in range(vocab_size) if w != end_id]
    sequences = [prefix + (end_id,) for n in range(max_length) for prefix in itertools.product(words, repeat=n)]
    sequences += list(itertools.product(words, repeat=max_length))
    tokens = numpy.zeros((len(sequences), max_length), dtype=numpy.int64)
    for row, sequence in enumerate(sequences):
        tokens[row, :len(sequence)] = sequence
    return tokens, numpy.array([len(sequence) for sequence in sequences])


@dataclass
class SCSTConfig(TrainConfig):
    """A self-critical run's settings: TrainConfig's, plus the sampling (saved in checkpoints)."""
    samples: int = 1             # K captions sampled per image each step
    baseline: str = "greedy"     # "greedy" or "samples" (see `advantages`)
    init: str = ""               # the cross-entropy checkpoint the run started from


# ------------------------------------------------------------------ training


@dataclass
class SCSTProgress(_Progress):
    """_Progress plus the rewards of the epoch so far and the best dev CIDEr-D."""
    epoch_reward_sum: float = 0.0      # sum over steps of the mean sample reward
    epoch_greedy_sum: float = 0.0      # sum over steps of the mean greedy reward
    best_cider: float = -1.0           # best dev CIDEr-D of any validation (decides best.npz)
    best_whole_epoch_cider: float = -1.0
    reward_trace: list = field(default_factory=list)   # [step, running mean sample reward, ... greedy]


class _Decoder:
    """The decoder's parameters alone: self-critical training leaves the encoder as it is."""

    def __init__(self, model):
        self.model = model

    def named_parameters(self):
        yield from self.model.named_parameters("decoder")


def _images_of_epoch(num_images, batch_size, seed, epoch):
    """The image indices of every batch of `epoch`: a permutation from default_rng([seed, 2, epoch])."""
    order = numpy.random.default_rng([seed, 2, epoch]).permutation(num_images)
    return [order[start:start + batch_size] for start in range(0, num_images, batch_size)]


class SelfCriticalTrainer(Trainer):
    """Self-critical training of a cross-entropy-trained `model` (see the module docstring).

    Same checkpoints (best.npz by dev CIDEr-D of greedy captions, last.npz,
    --resume), time limit, Ctrl-C and early stopping as the Trainer; a step
    takes a batch of IMAGES (config.batch_size), not of captions. The
    encoder stays frozen (eval mode): only the decoder is trained.
    """
    score_name = "CIDEr-D"
    run_kind = "self-critical"

    def __init__(self, model, vocabulary, encoder, train, dev, config, out_dir, log=print, data_spec=None):
        super().__init__(model, vocabulary, encoder, train, dev, config, out_dir, log=log, data_spec=data_spec)
        if config.baseline not in BASELINES:
            raise ValueError(f"unknown baseline {config.baseline!r}: choose one of {BASELINES}")
        if config.baseline == "samples" and config.samples < 2:
            raise ValueError("the 'samples' baseline needs at least 2 samples per image")
        self.params = _Decoder(model)
        self.optimizer = Adam(self.params, lr=config.lr, weight_decay=config.weight_decay)
        self.scheduler = ReduceOnPlateau(self.optimizer, factor=config.lr_factor,
                                         patience=config.lr_patience, mode="max")
        self.progress = SCSTProgress()
        self.reward = CiderD(train.references)   # document frequencies of the training references, once

    RESUME_FIXED = Trainer.RESUME_FIXED + ("samples", "baseline", "max_length")

    def _training_state(self):
        state = super()._training_state()
        state["rng"]["scheme"] = ("images of epoch e: default_rng([seed, 2, e]); samples of step s: "
                                  "default_rng([seed, 3, s]) (see captioning.scst)")
        return state

    @property
    def steps_per_epoch(self):
        return math.ceil(len(self.train_data) / self.config.batch_size)

    def epoch_batches(self, epoch):
        """The image indices of every batch of `epoch` (drawn once per epoch)."""
        if self._batches[0] != epoch:
            cfg = self.config
            self._batches = (epoch, _images_of_epoch(len(self.train_data), cfg.batch_size, cfg.seed, epoch))
        return self._batches[1]

    # ------------------------------------------------------------ one step
    def train_step(self, epoch, batch):
        """One self-critical step; returns (surrogate loss, sampled tokens) and sets self.last_rewards."""
        cfg = self.config
        images = self.epoch_batches(epoch)[batch]
        self.model.eval()      # dropout off: sample and differentiate the same policy
        self.encoder.eval()
        features = self.encoder.encode(self.train_inputs(images), self.model.feature_kind, self.model.dtype)
        greedy = greedy_decode(self.model, features, self.model.start_id, self.model.end_id,
                               max_length=cfg.max_length)
        rng = numpy.random.default_rng([cfg.seed, 3, self.progress.step])
        tokens, lengths = sample_captions(self.model, features, cfg.max_length, rng, samples=cfg.samples)
        sample_rewards = self.reward.scores(numpy.repeat(images, cfg.samples),
                                            [self.vocabulary.decode(row[:n]) for row, n in zip(tokens, lengths)])
        greedy_rewards = self.reward.scores(images, [self.vocabulary.decode(seq) for seq in greedy.sequences])
        advantage, _ = advantages(sample_rewards, greedy_rewards, cfg.samples, cfg.baseline)

        captions, mask = sampled_caption_batch(tokens, lengths, self.model.start_id, self.model.null_id)
        xp = backend.get_array_module(features)
        if cfg.samples > 1:
            features = xp.repeat(features, cfg.samples, axis=0)
        weights = backend.asarray(mask * advantage[:, None], dtype=self.model.dtype)
        loss, _, _ = self.model.forward_backward(features, backend.asarray(captions), token_weights=weights)
        norm = clip_grad_norm(self.params, cfg.clip)
        if not (math.isfinite(loss) and math.isfinite(norm)):
            p = self.progress
            raise TrainingDiverged(
                f"the policy-gradient loss became {loss} (gradient norm {norm}) at epoch {p.epoch + 1}, step "
                f"{p.step + 1}; training stopped. The last good checkpoints are untouched in {self.out_dir}. "
                "Try a lower --lr or a smaller --clip.")
        if cfg.lr_decay_to < 1.0:
            self.optimizer.lr = self.scheduled_lr(self.progress.step)
        self.optimizer.step()
        self.last_rewards = (float(sample_rewards.mean()), float(greedy_rewards.mean()))
        return loss, int(lengths.sum())

    # ------------------------------------------------------------ validation
    def validate(self):
        """Greedy dev captions: (CIDEr-D, [BLEU-1..4], captions)."""
        dev = self.dev_data.head(self.config.val_images)
        captions, _ = generate_captions(self.model, self.encoder, dev, self.vocabulary, beam=1,
                                        max_length=self.config.max_length)
        bleus = evaluate_captions(dev.references, captions, with_cider=False)["bleu"]
        return cider_d(dev.references, captions), bleus, captions

    # ------------------------------------------------------------ the loop
    def fit(self, stop_after_steps=None):
        """As Trainer.fit; a new run first scores the initial model on dev (epoch 0 of the history),
        which is best.npz until a self-critical epoch beats it."""
        if self._nothing_to_do():
            return self.progress.history
        if not self.progress.history:
            self._validate_start()
        return super().fit(stop_after_steps)

    def _validate_start(self):
        p = self.progress
        start = time.perf_counter()
        cider, bleus, captions = self.validate()
        p.history.append({"epoch": 0, "steps": 0, "partial": False, "train_reward": None, "train_greedy": None,
                          "dev_cider": cider, "dev_bleu": bleus, "lr": self.optimizer.lr, "elapsed": 0.0,
                          "validation_seconds": time.perf_counter() - start})
        p.best_cider = p.best_whole_epoch_cider = cider
        p.best_epoch = 0
        self.log(f"start ({self.config.init or 'initial model'}): dev CIDEr-D {100 * cider:.2f}, BLEU-4 "
                 f"{100 * bleus[3]:.2f} (greedy); e.g. \"{' '.join(captions[0]) if captions else ''}\"")
        self.save(self.best_path)
        self.save(self.last_path)

    def _one_step(self, meter, elapsed_before):
        """A self-critical step, its bookkeeping, and a progress line when one is due."""
        cfg, p = self.config, self.progress
        loss, tokens = self.train_step(p.epoch, p.batch)
        reward, greedy = self.last_rewards
        p.batch += 1
        p.step += 1
        p.epoch_loss_sum += loss
        p.epoch_tokens += tokens
        p.epoch_reward_sum += reward
        p.epoch_greedy_sum += greedy
        meter.add(len(self.epoch_batches(p.epoch)[p.batch - 1]))
        p.elapsed = elapsed_before + meter.session_seconds()
        if p.step % 10 == 0 or p.batch == self.steps_per_epoch:
            p.reward_trace.append([p.step, p.epoch_reward_sum / p.batch, p.epoch_greedy_sum / p.batch])
        if meter.due(end_of_epoch=p.batch == self.steps_per_epoch):
            left = cfg.max_minutes * 60 - p.elapsed if cfg.max_minutes is not None else None
            rate, eta = meter.report(p.step, seconds_left=left)
            dev = self._last_dev_cider()
            self.log(f"epoch {p.epoch + 1}/{cfg.epochs}  step {p.batch}/{self.steps_per_epoch}"
                     f"  reward {100 * p.epoch_reward_sum / p.batch:.2f}"
                     f" (greedy {100 * p.epoch_greedy_sum / p.batch:.2f})"
                     f"  dev CIDEr-D {dev}  {rate:,.1f} images/s  lr {self.optimizer.lr:.2e}"
                     f"  ETA {format_duration(eta)}")

    def _last_dev_cider(self):
        history = self.progress.history
        return f"{100 * history[-1]['dev_cider']:.2f}" if history else "-"

    best_fields = ("best_cider", "best_whole_epoch_cider")

    def _validate_epoch(self, partial):
        """Dev CIDEr-D of greedy captions, the epoch's record (rewards instead of the dev loss), captions."""
        p = self.progress
        cider, bleus, captions = self.validate()
        steps = max(p.batch, 1)
        record = {"epoch": p.epoch + 1, "steps": p.batch, "partial": partial,
                  "train_reward": p.epoch_reward_sum / steps, "train_greedy": p.epoch_greedy_sum / steps,
                  "train_loss": p.epoch_loss_sum / steps, "dev_cider": cider, "dev_bleu": bleus,
                  "lr": self.optimizer.lr, "elapsed": p.elapsed}
        return cider, record, captions

    def _epoch_summary(self, record, improved):
        return (f"reward {100 * record['train_reward']:.2f} (greedy {100 * record['train_greedy']:.2f}), "
                f"dev CIDEr-D {100 * record['dev_cider']:.2f}{' *best*' if improved else ''} "
                f"(BLEU-4 {100 * record['dev_bleu'][3]:.2f}), lr {self.optimizer.lr:.2e}")

    def _start_epoch_sums(self):
        super()._start_epoch_sums()
        self.progress.epoch_reward_sum = self.progress.epoch_greedy_sum = 0.0

    def _draw_curves(self):
        try:
            save_scst_curves(os.path.join(self.out_dir, "curves.png"), self.progress.reward_trace,
                             self.progress.history, self.steps_per_epoch)
        except OSError as exc:  # a plot must never kill a training run
            self.log(f"warning: could not write curves.png: {exc}")
