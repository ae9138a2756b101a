"""Lesson 17: better captions - LRCN, fine-tuning the CNN, and self-critical training.

Three ways past the captioner of lessons 9-13 (issue 15 of the project):

- a third decoder design, LRCN (Donahue et al. 2015): a words-only LSTM
  under a second LSTM that is given the image at EVERY step - between Show
  and Tell (the image once, as the starting state) and Show, Attend and
  Tell (the image at every step, through attention);
- fine-tuning the last blocks of the pretrained CNN with the decoder
  (`train --fine-tune-blocks K`) instead of freezing all of it;
- self-critical sequence training (Rennie et al. 2017, `train --scst`):
  after cross-entropy, train on the metric itself (CIDEr-D) with the
  REINFORCE policy gradient (Williams 1992) and the greedy caption's
  score as baseline.

Everything runs on the project's own code (captioning.models.LRCN,
captioning.encoders.finetuned, captioning.scst) on small sizes: no data
download; the pretrained EfficientNet weights are used where installed.
"""
import re
from pathlib import Path

import numpy
from PIL import Image, ImageDraw

from captioning.data import Vocabulary, shapes_splits
from captioning.decoding import greedy_decode
from captioning.encoders import TrainableEncoder
from captioning.encoders.efficientnet import (EfficientNetLite0, WeightsNotInstalledError, blocks,
                                              expected_state_dict_shapes)
from captioning.encoders.finetuned import NUM_BLOCKS, EfficientNetTop, TopInputs, input_side
from captioning.generation import generate_captions
from captioning.metrics import CiderD
from captioning.models import LRCN, build
from captioning.scst import SCSTConfig, SelfCriticalTrainer, sample_captions, sampled_caption_batch
from captioning.scst import every_caption as scst_every_caption
from captioning.training import Trainer, TrainConfig
from nn import backend
from nn.gradcheck import directional_gradient_check, eval_numerical_gradient, eval_numerical_gradient_array, rel_error
from nn.losses import log_softmax, policy_gradient_loss

TITLE = "Better captions: LRCN, fine-tuning the CNN's last blocks, and self-critical training on CIDEr-D"
SECONDS = 30
QUICK_SECONDS = 13

# `python run_lesson.py 17 --exercise`: write it yourself (graded by grade_policy_gradient and steps 6-8)
EXERCISES = ["policy_gradient"]
EXERCISE_IMPORTS = ["from nn import backend"]

README = Path(__file__).resolve().parents[1] / "README.md"
IMAGE_SIZE = 32                      # shapes pictures for the training steps (as lessons 1 and 11)
FLICKR8K_PHOTOS = 6000 + 1000 + 1000   # the official train + dev + test split (what a feature cache holds)

# The tiny vocabulary of steps 2 and 7-8: ids 0 <NULL>, 1 <START>, 2 <END>, 3 "red", 4 "circle"
TINY_WORDS = ["<NULL>", "<START>", "<END>", "red", "circle"]
END, MAX_LENGTH = 2, 3
TINY_REFERENCES = [["red circle", "a red circle", "red red circle"],      # image 0
                   ["circle", "a circle circle", "circle circle"]]        # image 1


def policy_gradient(scores, sampled, mask, advantages):
    """REINFORCE's surrogate loss of sampled captions and its gradient with respect to the scores.

    Each row i is a caption sampled from the model, with advantage
    a_i = r_i - b_i (its reward minus the baseline). With log p the
    log-softmax of the scores,

        loss = -sum_i a_i sum_t mask[i, t] log p[i, t, sampled[i, t]] / N
        dscores[i, t] = a_i * mask[i, t] * (softmax(scores[i, t]) - onehot(sampled[i, t])) / N

    i.e. the cross-entropy gradient of the sampled word, weighted by the
    caption's advantage (and 0 past the caption's end).

    Inputs:
    - scores: float (N, T, V), computed with the sampled words as the inputs
    - sampled: int (N, T), the sampled words (the end token included)
    - mask: bool (N, T), True on each row's sampled tokens
    - advantages: float (N,), r_i - b_i
    Returns a tuple of:
    - loss: Python float
    - dscores: (N, T, V), like scores
    """
    xp = backend.get_array_module(scores)
    N, T, V = scores.shape
    shifted = scores - scores.max(axis=2, keepdims=True)                   # stable log-softmax
    log_probs = shifted - xp.log(xp.exp(shifted).sum(axis=2, keepdims=True))
    weights = mask * advantages[:, None] / N                                # (N, T)
    rows, steps = xp.arange(N)[:, None], xp.arange(T)[None, :]
    loss = -float((weights * log_probs[rows, steps, sampled]).sum())
    dscores = xp.exp(log_probs)
    dscores[rows, steps, sampled] -= 1                                      # softmax - onehot
    dscores *= weights[:, :, None]
    return loss, dscores


# ------------------------------------------------------------------ helpers of the tiny model

def tiny_lrcn(seed=0):
    """A float64 LRCN over the 5-word vocabulary (weights x3: sharper than at initialisation)."""
    config = {"model": "lrcn", "vocab_size": len(TINY_WORDS), "feature_dim": 3, "wordvec_dim": 3, "hidden_dim": 4,
              "dropout": 0.0, "null_id": 0, "start_id": 1, "end_id": END}
    model = build(config, seed=seed, dtype=numpy.float64).eval()
    for name in model.params:
        model.params[name] = model.params[name] * 3
    return model


def every_caption():
    """Every token sequence the sampler can draw with at most MAX_LENGTH tokens: any words but <END>
    (<NULL> and <START> too) then <END>, or MAX_LENGTH words without it. (tokens (S, 3), lengths (S,))"""
    return scst_every_caption(len(TINY_WORDS), END, MAX_LENGTH)


def caption_text(row, length):
    """The words of a sampled caption (its <END> left out), as the reward reads them."""
    return " ".join(TINY_WORDS[w] for w in row[:length] if w != END)


def decoded_log_probs(model, features, tokens, lengths):
    """log p(caption | image), (images, S), by feeding each caption to decode_step one word at a time."""
    xp = backend.get_array_module(features)
    state = model.init_decode_state(xp.repeat(features, len(tokens), axis=0))
    rows, row_lengths = numpy.tile(tokens, (len(features), 1)), numpy.tile(lengths, len(features))
    total = numpy.zeros(len(rows))
    words = backend.asarray(numpy.full(len(rows), model.start_id))
    for t in range(tokens.shape[1]):
        log_probs, state, _ = model.decode_step(words, state)
        picked = backend.to_numpy(log_probs)[numpy.arange(len(rows)), rows[:, t]]
        total += numpy.where(t < row_lengths, picked, 0.0)
        words = backend.asarray(rows[:, t])
    return total.reshape(len(features), len(tokens))


# ------------------------------------------------------------------ 1. LRCN

IMAGE_PARAMETERS = {   # the parameters that multiply the image's features: name -> how many of its rows (None: all)
    "show-tell": {"W_init": None, "b_init": None},
    "lrcn": {"W_img": None, "b_img": None, "Wx2": "wordvec_dim"},            # Wx2's last E rows take img
    "attention": {"W_h0": None, "b_h0": None, "W_c0": None, "b_c0": None, "W_att_feat": None, "b_att": None,
                  "Wx": "feature_dim"},                                     # Wx's last D rows take the context
}


def image_parameter_count(model):
    """How many of a model's parameters multiply the image's features, or add to such a product
    (IMAGE_PARAMETERS; attention's scoring weights and gate, which also read the hidden state, not counted)."""
    total = 0
    for name, rows in IMAGE_PARAMETERS[model.name].items():
        value = model.params[name]
        total += int(value.size) if rows is None else int(value[-model.config[rows]:].size)
    return total


def step_1_where_the_image_enters(ctx):
    """Where the image enters: once (Show and Tell), at every step (LRCN), by attention (Show, Attend, Tell).

    Show and Tell:      h0 = image @ W_init; then the LSTM sees only words.
    LRCN (factored):    layer 1 = LSTM(words) never sees the image;
                        layer 2 = LSTM([h1_t ; img]) gets the SAME projected
                        image vector img = image @ W_img at every step.
    Show, Attend, Tell: at every step a new context vector, the attention-
                        weighted mean of the 7x7 grid, enters the LSTM.
    The three real model classes at the sizes of the shipped Flickr8k
    captioner (1280-d features, hidden 512, word vectors 256, attention 256)
    and a 3000-word vocabulary; the parameters that "read the image" are
    those that multiply its features (`image_parameter_count`). LRCN
    projects the 1280-d image to E = 256 values before the gates: a
    rank-256 factorisation of the image's (1280, 4H) share of layer 2's
    gates. "Factored" is checked: feeding the same words for two different
    images, layer 1's states are the same (0 apart, or rounding on a GPU),
    layer 2's are not.
    """
    sizes = {"vocab_size": 3000, "feature_dim": 1280, "wordvec_dim": 256, "hidden_dim": 512, "attention_dim": 256,
             "null_id": 0, "start_id": 1, "end_id": 2}
    models = {kind: build({**sizes, "model": kind}, seed=0) for kind in ("show-tell", "lrcn", "attention")}
    rows = {model.title: f"{model.num_params():,} parameters, {image_parameter_count(model):,} of them read the image"
            for model in models.values()}
    D, E, H = sizes["feature_dim"], sizes["wordvec_dim"], sizes["hidden_dim"]
    factored, direct = D * E + E + E * 4 * H, D * 4 * H
    ctx.check(image_parameter_count(models["lrcn"]) == factored, "LRCN's image parameters: W_img, b_img, E rows")

    lrcn = models["lrcn"]
    images = ctx.rng(0).standard_normal((2, D)).astype(lrcn.dtype)
    state = lrcn.init_decode_state(images)
    for word in (1, 7, 42):                       # <START>, then two words, the same for both images
        _, state, _ = lrcn.decode_step(backend.asarray(numpy.full(2, word)), state)
    h1_gap = float(abs(state["h1"][0] - state["h1"][1]).max())
    h2_gap = float(abs(state["h2"][0] - state["h2"][1]).max())
    ctx.check(h1_gap < 1e-6 and h2_gap > 1e-3, "layer 1 is free of the image, layer 2 is not")
    return rows | {"LRCN image -> gates, factored: D*E + E + E*4H": f"{factored:,}",
                   "the same without the projection: D*4H": f"{direct:,}",
                   "after 3 words, two images: max |h1 difference|": h1_gap,
                   "after 3 words, two images: max |h2 difference|": round(h2_gap, 4)}


# As in lesson 9: below this |analytic| + |numeric|, a gradient entry's relative error measures
# the finite difference's rounding (eps * loss / h, about 1e-10 here), not the backward pass.
NOISE_FLOOR = 1e-4


def step_2_lrcn_gradient_and_decoding(ctx):
    """LRCN's hand-written backward pass, and teacher forcing against step-by-step decoding.

    Training (teacher forcing) runs each layer as ONE whole-sequence LSTM:
    every input of both layers is known in advance. Decoding runs one step
    at a time (`decode_step`, printed below) and computes the image's share
    of layer 2's gates once per image (img_gates). The two must be the same
    function: on a tiny float64 LRCN over 5 words (<NULL>, <START>, <END>,
    "red", "circle") every caption of at most 3 tokens is listed (85 of
    them); their probabilities by decoding add up to 1 for each image and
    equal teacher forcing's. Then a numerical gradient check of every
    parameter, as lesson 9 did for Show and Tell: entries below NOISE_FLOOR
    are held to an absolute tolerance, since there the finite difference's
    rounding (about 1e-10) would rule their relative error.
    """
    ctx.show_source(LRCN.decode_step)
    model = tiny_lrcn()
    features = ctx.rng(1).standard_normal((2, 3))
    tokens, lengths = every_caption()
    decoded = decoded_log_probs(model, features, tokens, lengths)             # (2, 85)

    captions, mask = sampled_caption_batch(numpy.tile(tokens, (2, 1)), numpy.tile(lengths, 2), 1, 0)
    xp = backend.get_array_module(features)
    scores, _ = model._forward(xp.repeat(features, len(tokens), axis=0), backend.asarray(captions[:, :-1]), None)
    picked = backend.to_numpy(log_softmax(scores))[numpy.arange(len(captions))[:, None],
                                                   numpy.arange(MAX_LENGTH), captions[:, 1:]]
    forced = (picked * mask).sum(axis=1).reshape(2, len(tokens))
    totals = numpy.exp(decoded).sum(axis=1)
    ctx.check(numpy.allclose(totals, 1.0, atol=1e-12), f"the 85 captions' probabilities add up to 1: {totals}")
    ctx.check(numpy.abs(forced - decoded).max() < 1e-12, "teacher forcing = decoding, caption by caption")

    batch = backend.asarray(captions[[5, 40, 90, 160]])
    some_features = xp.repeat(features, 2, axis=0)
    _, grads = model.loss(some_features, batch)
    errors, gaps = {}, {}
    for name in model.params:
        numeric = eval_numerical_gradient(lambda: model.loss(some_features, batch)[0], model.params[name])
        errors[name] = rel_error(grads[name], numeric, floor=NOISE_FLOOR)
        gaps[name] = float(abs(backend.to_numpy(grads[name]) - backend.to_numpy(numeric)).max())
    ctx.check(max(errors.values()) < 1e-5 and max(gaps.values()) < 1e-8, f"LRCN gradients must match: {errors}")
    ctx.every_caption, ctx.tiny_features = (tokens, lengths), features
    return {"captions listed": len(tokens), "sum of their probabilities, per image": totals,
            "largest |teacher-forced - decoded| log p": float(numpy.abs(forced - decoded).max()),
            "largest relative error of a gradient": f"{max(errors.values()):.1e} ({max(errors, key=errors.get)})",
            "largest absolute difference (rounding, as in lesson 9)": f"{max(gaps.values()):.1e}"}


# ------------------------------------------------------------------ 2. fine-tuning

def step_3_where_to_cut(ctx):
    """Fine-tuning: `--fine-tune-blocks K` trains the last K blocks (and the head); the rest is cached.

    EfficientNet-Lite0 is cut at block 16 - K. The photos go through the
    frozen bottom (stem and blocks 0 .. 15-K) ONCE, into a cache of the
    activations entering block 16 - K; every training step then runs only
    the trainable top (`EfficientNetTop(K)`) forward and backward, from the
    cache. The table is computed from the network's real block table and
    the real top modules (random weights: only their shapes matter here):
    the size of the cached map per photo (float16, as the cache stores it)
    and for 8000 photos, and how many encoder weights train. Deeper cuts
    train more of the network, and mostly cost a larger cache: the maps
    get larger towards the stem, though fewer channels make a few cuts
    cheaper than the one after them (K = 8 against K = 5).
    """
    table = {}
    for k in (1, 2, 4, 5, 8, 12, 16):
        spec = blocks()[NUM_BLOCKS - k]
        side = input_side(224, k)
        per_photo = spec.in_channels * side * side * 2                       # float16 bytes
        top = EfficientNetTop(k)
        trainable = sum(int(p.size) for _, p, _ in top.named_parameters())
        table[k] = (spec.index, spec.in_channels, side, per_photo, trainable)
    ctx.check(table[1][1:3] == (192, 7), "K = 1 caches the 192 x 7 x 7 map entering block 15")
    weights = [row[4] for row in table.values()]
    ctx.check(all(a < b for a, b in zip(weights, weights[1:])), "a deeper cut trains more weights")
    ctx.check(table[16][3] > 10 * table[1][3], "the cache grows towards the stem")
    ctx.check(table[8][3] < table[5][3], "fewer channels: K = 8 caches less than K = 5")
    return {f"--fine-tune-blocks {k:<2d}": f"cut before block {i:2d}: caches {c} x {s} x {s} = {b / 1024:6.1f} KB a photo, "
                           f"{b * FLICKR8K_PHOTOS / 1e6:7.1f} MB for {FLICKR8K_PHOTOS} photos; "
                           f"{n / 1e6:.2f} M encoder weights train"
            for k, (i, c, s, b, n) in table.items()}


def step_4_batchnorm_stays_frozen(ctx):
    """Batchnorm stays in inference mode: folded into the convolutions, so no batchnorm is left to train.

    Lesson 14 showed the two modes: in training mode batchnorm normalises
    by the statistics of the batch, so a picture's output depends on its
    batchmates; in inference mode it is a fixed affine map per channel
    with the running statistics, which folds into the conv before it,
    w' = w * gamma / sqrt(var + eps), b' = beta - mean * gamma / sqrt(var + eps).
    Fine-tuning keeps it in inference mode: with batches of a few dozen
    photos, at 7 x 7 positions each, batch statistics would be noisy
    estimates of the ImageNet ones the pretrained weights expect, the
    usual reason to freeze them when fine-tuning with small batches. So the
    trainable top holds the FOLDED convs: for K = 1, the pretrained arrays
    of block 15 and the head (from the network's real state-dict layout)
    against the top's parameters - one (w, b) per conv, each bias one
    value per channel of the batchnorm it replaces, and nothing else.
    """
    first = NUM_BLOCKS - 1
    pretrained = {name: shape for name, shape in expected_state_dict_shapes().items()
                  if name.startswith((f"_blocks.{first}.", "_conv_head.", "_bn1."))}
    conv_weights = [shape for name, shape in pretrained.items() if name.endswith("weight") and len(shape) == 4]
    norms = [shape for name, shape in pretrained.items() if name.endswith("running_mean")]
    top = {name: tuple(param.shape) for name, param, _ in EfficientNetTop(1).named_parameters()}
    ctx.check([s for n, s in top.items() if n.endswith(".w")] == conv_weights, "the top's w are the pretrained convs")
    ctx.check([s for n, s in top.items() if n.endswith(".b")] == norms, "one bias per batchnorm channel")
    ctx.check(len(top) == 2 * len(conv_weights), "nothing else trains")

    def values(shapes):
        return sum(int(numpy.prod(shape)) for shape in shapes)
    batchnorm = [shape for name, shape in pretrained.items() if "._bn" in name or name.startswith("_bn1.")]
    return {"pretrained arrays (block 15 and the head)": f"{len(pretrained)}: {len(conv_weights)} conv weights, "
                                                         f"{len(batchnorm)} batchnorm arrays",
            "values in those batchnorm arrays (gamma, beta, mean, var, a counter)": values(batchnorm),
            "trainable top arrays": f"{len(top)}: " + ", ".join(top),
            "trainable values": f"{values(top.values()):,} = the conv weights {values(conv_weights):,} "
                                f"+ one bias per channel {values(norms):,}"}


def step_5_gradient_check_of_the_top(ctx):
    """A float64 gradient check of a trainable top (the last 2 blocks and the head), and the real weights.

    The top's backward chains the backward passes of lesson 5's layers:
    1x1 conv, ReLU6, depthwise conv, the residual sum, the mean over the
    grid. Checked here on random weights (so this step runs without the
    pretrained package) and a small input (2 photos, 3 x 3 instead of
    7 x 7): every entry of one input channel elementwise, and each
    parameter along a random direction (one finite difference per
    parameter array; there are far too many entries to go one by one).
    With the EfficientNet-Lite0 weights installed, the folded pretrained
    top run on the cached activations must then give the features of the
    whole network with its batchnorms explicit (inference mode): folding
    and the cut change nothing until training starts.
    """
    gen = ctx.rng(3)
    top = EfficientNetTop(2, dtype=numpy.float64).to_backend()
    for name, param, _ in top.named_parameters():
        if name.endswith(".b"):                 # folded biases are far from 0
            param[...] = gen.normal(0.0, 0.5, param.shape)
    x = gen.standard_normal((2, top.in_channels, 3, 3))
    grid, pooled = top.forward(x)
    g_grid, g_pooled = gen.standard_normal(grid.shape), gen.standard_normal(pooled.shape)
    dx = top.backward(g_grid, g_pooled)
    grads = {name: grad.copy() for name, _, grad in top.named_parameters()}

    def loss():
        grid, pooled = top.forward(x)
        return float((grid * g_grid).sum() + (pooled * g_pooled).sum())
    numeric = eval_numerical_gradient_array(lambda _: backend.xp().asarray(loss()), x[0, :1],
                                            backend.xp().ones(()))
    errors = {"x (one channel, elementwise)": rel_error(numeric, dx[0, :1])}
    for index, (name, param, _) in enumerate(top.named_parameters()):
        errors[name] = directional_gradient_check(loss, [param], [grads[name]], h=1e-7, seed=index)[2]
    ctx.check(max(errors.values()) < 1e-6, f"the top's gradients must match: {errors}")
    results = {"parameter arrays checked": len(errors) - 1,
               "largest relative error": f"{max(errors.values()):.1e} ({max(errors, key=errors.get)})"}
    try:
        network = EfficientNetLite0.from_pretrained()                                   # batchnorm folded
        with_batchnorm = EfficientNetLite0.from_pretrained(fold_batchnorm=False)         # conv, then batchnorm
    except WeightsNotInstalledError:
        return results | {"folded top vs whole network with batchnorm": "skipped: EfficientNet-Lite0 weights not installed"}
    photos = ctx.rng(4).uniform(-1.0, 1.0, (2, 3, 64, 64)).astype(numpy.float32)
    pretrained_top = EfficientNetTop(1)
    pretrained_top.load_state_dict(network.folded_units(NUM_BLOCKS - 1))
    from_cache, _ = pretrained_top.to_backend().forward(TopInputs(1, network).activations(photos))
    whole, _ = with_batchnorm.features(photos)
    gap = float(abs(from_cache - whole).max() / abs(whole).max())
    ctx.check(gap < 1e-5, "the folded pretrained top on cached activations = the whole network with batchnorm")
    return results | {"folded top on cached activations vs whole network with batchnorm, max relative gap":
                      f"{gap:.1e}"}


# ------------------------------------------------------------------ 3. self-critical training

def step_6_the_policy_gradient(ctx):
    """Self-critical training: the caption is an action, CIDEr-D the reward, REINFORCE the gradient.

    Cross-entropy trains the next word of a HUMAN caption given the true
    previous words; a captioner is judged on ITS OWN captions by a metric
    (CIDEr-D, lesson 12), which has no gradient: it counts n-grams of
    discrete words. REINFORCE gets around that: sample a caption w from the
    model, score it r(w); then (r(w) - b) grad log p(w) is an unbiased
    estimate of grad E[r] for any baseline b that does not depend on w (it
    changes the variance, not the mean). Self-critical (Rennie et al.): b =
    the score of the model's own greedy caption, so a sample better than
    what the model would say at test time is made more likely, a worse one
    less likely. Minus (r - b) log p(w) has, at each step, the gradient
    (r - b)(softmax - onehot(w_t)) w.r.t. the scores: the cross-entropy
    gradient ON THE SAMPLED CAPTION, weighted by its advantage r - b.
    `policy_gradient` (top of this file; `--exercise` lets you write it)
    is checked against the library's `nn.losses.policy_gradient_loss` and
    by finite differences.
    """
    gen = ctx.rng(5)
    scores = gen.standard_normal((3, 4, 6))
    sampled = gen.integers(0, 6, size=(3, 4))
    mask = backend.asarray(numpy.array([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]], dtype=bool))
    advantage = backend.asarray(numpy.array([0.5, -2.0, 1.5]))
    loss, dscores = policy_gradient(scores, sampled, mask, advantage)
    library_loss, library_dscores = policy_gradient_loss(scores, sampled, mask, advantage)
    numeric = eval_numerical_gradient(lambda: policy_gradient(scores, sampled, mask, advantage)[0], scores)
    ctx.check(abs(loss - library_loss) < 1e-12 and rel_error(dscores, library_dscores) < 1e-10,
              "policy_gradient = nn.losses.policy_gradient_loss")
    ctx.check(rel_error(dscores, numeric) < 1e-7, "dscores = the numerical gradient of the loss")
    ctx.check(float(abs(dscores[1, 2:]).max()) == 0.0, "no gradient past a caption's end")
    pushed = float(dscores[1, 0, int(sampled[1, 0])])       # > 0: a descent step lowers that word's score
    ctx.check(pushed > 0, "a caption worse than its baseline (advantage < 0) has its words made less likely")
    return {"loss": loss, "the library's loss": library_loss,
            "relative error of dscores, vs the library": rel_error(dscores, library_dscores),
            "relative error of dscores, vs finite differences": rel_error(dscores, numeric),
            "row 1 (advantage -2.0): dscores of its first sampled word": round(pushed, 4)}


def policy_gradient_of(model, features, tokens, lengths, advantages):
    """The policy gradient of the model's parameters (grads of the surrogate loss) for captions
    (tokens, lengths) of the images `features` (one row each), through `policy_gradient`."""
    captions, mask = sampled_caption_batch(tokens, lengths, model.start_id, model.null_id)
    scores, cache = model._forward(features, backend.asarray(captions[:, :-1]), None)
    _, dscores = policy_gradient(scores, backend.asarray(captions[:, 1:]), backend.asarray(mask),
                                 backend.asarray(advantages))
    grads, _ = model._backward(dscores, cache)
    return grads


def gradient_error(estimate, exact):
    """|estimate - exact| / |exact| over all parameters together."""
    diff = sum(float(((estimate[n] - exact[n]) ** 2).sum()) for n in exact)
    return (diff / sum(float((exact[n] ** 2).sum()) for n in exact)) ** 0.5


def step_7_exact_gradient_of_the_expected_reward(ctx):
    """On a tiny vocabulary every caption can be listed: the exact gradient of the expected reward.

    J = mean over 2 images of sum_w p(w | image) r(w), the expected CIDEr-D
    of a sampled caption (document frequencies and references: two tiny
    images, one about a "red circle", one about "circle"s). With all 85
    captions listed, J is an exact sum and its gradient can be taken by
    central differences. The policy gradient's expectation is the same sum
    of (r - b) grad log p(w) weighted by p(w): here `policy_gradient`
    through LRCN's own backward pass (`_forward`, `_backward`) with every
    caption as a row, advantage p(w)(r(w) - b) x rows / 2 (the helper
    `policy_gradient_of` is printed below). Any baseline b must give the
    same: checked with the greedy caption's reward and with 0.
    """
    ctx.show_source(policy_gradient_of)
    model, features = tiny_lrcn(), ctx.tiny_features
    tokens, lengths = ctx.every_caption
    reward = CiderD(TINY_REFERENCES)
    texts = [caption_text(row, n) for row, n in zip(tokens, lengths)]
    rewards = numpy.stack([reward.scores([i] * len(texts), texts) for i in range(2)])      # (2, 85)
    probs = numpy.exp(decoded_log_probs(model, features, tokens, lengths))

    def expected_reward():
        return float((numpy.exp(decoded_log_probs(model, features, tokens, lengths)) * rewards).sum() / 2)
    greedy = greedy_decode(model, features, model.start_id, END, max_length=MAX_LENGTH)
    greedy_rewards = reward.scores([0, 1], [caption_text(seq, len(seq)) for seq in greedy.sequences])
    rows = 2 * len(tokens)
    all_rows = backend.get_array_module(features).repeat(features, len(tokens), axis=0)
    errors = {}
    exact = {name: eval_numerical_gradient(expected_reward, value) for name, value in model.params.items()}
    for label, baseline in (("greedy", greedy_rewards), ("zero", numpy.zeros(2))):
        advantages = (probs * (rewards - baseline[:, None])).reshape(-1) * rows / 2
        grads = policy_gradient_of(model, all_rows, numpy.tile(tokens, (2, 1)), numpy.tile(lengths, 2), advantages)
        errors[label] = gradient_error({name: -grad for name, grad in grads.items()}, exact)
    ctx.check(max(errors.values()) < 1e-7, f"E[(r - b) grad log p] = grad E[r], whatever b: {errors}")
    ctx.tiny = (model, rewards, greedy_rewards, exact)
    best = numpy.argsort(-rewards, axis=1)[:, 0]
    return {"expected CIDEr-D x100 of a sampled caption, J": round(100 * expected_reward(), 2),
            "best caption for image 0, 1": [texts[best[0]], texts[best[1]]],
            "greedy captions' CIDEr-D x100 (the baselines)": numpy.round(100 * greedy_rewards, 2),
            "relative error of the expected estimate, baseline = greedy reward": f"{errors['greedy']:.1e}",
            "relative error of the expected estimate, baseline = 0": f"{errors['zero']:.1e}"}


def flat(grads, names):
    """The gradient dict as one NumPy vector (parameters in the order of `names`)."""
    return numpy.concatenate([backend.to_numpy(grads[name]).ravel() for name in names])


def caption_gradients(model, features, tokens, lengths):
    """grad log p(w | image) of every listed caption for every image: (images, S, parameters),
    one caption at a time through `policy_gradient` (advantage 1: minus the loss's gradient)."""
    xp = backend.get_array_module(features)
    out = numpy.zeros((len(features), len(tokens), sum(int(v.size) for v in model.params.values())))
    for i in range(len(features)):
        for s in range(len(tokens)):
            grads = policy_gradient_of(model, features[i:i + 1], tokens[s:s + 1], lengths[s:s + 1], xp.ones(1))
            out[i, s] = -flat(grads, model.params)
    return out


def sampled_gradient(model, features, rewards, samples, seed, baseline):
    """The mean over `samples` sampled captions per image of (r - b) grad log p (and over the images),
    as one NumPy vector: the estimate a training step with that many samples would use."""
    tokens, lengths = sample_captions(model, features, MAX_LENGTH, numpy.random.default_rng(seed), samples=samples)
    image = numpy.repeat(numpy.arange(len(features)), samples)
    index = {(tuple(row[:n])): k for k, (row, n) in enumerate(zip(*every_caption()))}
    sample_rewards = rewards[image, [index[tuple(row[:n])] for row, n in zip(tokens, lengths)]]
    xp = backend.get_array_module(features)
    grads = policy_gradient_of(model, xp.repeat(features, samples, axis=0), tokens, lengths,
                               sample_rewards - baseline[image])
    return -flat(grads, model.params)


def step_8_the_noise_and_the_baseline(ctx):
    """What training sees: a few sampled captions, a noisy estimate; the baseline only changes the noise.

    A training step samples a few captions per image (`sample_captions`,
    the library's sampler), not all 85. The mean of M samples' estimates
    (r - b) grad log p(w) is centred on the exact gradient, with variance
    Var / M, where Var, the variance of ONE sample's estimate, can be
    computed exactly here by listing the captions again:
        Var_b = sum_w p(w) |(r(w) - b) grad log p(w)|^2 - |grad E[r]|^2.
    It depends on b: measured with b = 0, b = the greedy caption's reward
    (self-critical) and b = E[r], the image's mean reward (which the "new
    SCST" baseline, the mean reward of the other samples, estimates). A
    baseline helps as far as it follows the image's mean reward: compare
    the greedy rewards (step 7) with E[r], both printed below.
    Then sampled means for growing M, their error against the exact
    gradient next to the error Var / M predicts (RMS over 5 draws;
    `sampled_gradient`, printed below, makes one estimate).
    """
    ctx.show_source(sampled_gradient)
    model, rewards, greedy_rewards, exact = ctx.tiny
    features, (tokens, lengths) = ctx.tiny_features, ctx.every_caption
    exact = flat(exact, model.params)
    probs = numpy.exp(decoded_log_probs(model, features, tokens, lengths))                # (2, 85)
    per_caption = caption_gradients(model, features, tokens, lengths)                     # (2, 85, P)
    per_image = numpy.einsum("is,is,isp->ip", probs, rewards, per_caption)               # grad E[r | image]

    def variance(baseline):   # of one sample's estimate, summed over the images' halves of J
        advantage = rewards - baseline[:, None]
        second_moment = numpy.einsum("is,is,isp->i", probs, advantage ** 2, per_caption ** 2)
        return (second_moment - (per_image ** 2).sum(axis=1)).sum() / len(features) ** 2
    baselines = {"b = 0": numpy.zeros(2), "b = greedy reward": greedy_rewards,
                 "b = E[r], the mean reward": (probs * rewards).sum(axis=1)}
    variances = {label: variance(b) for label, b in baselines.items()}
    ctx.check(variances["b = E[r], the mean reward"] < variances["b = 0"], f"a baseline lowers the noise: {variances}")

    counts = (10, 100, 1000) if ctx.quick else (10, 100, 1000, 10000)
    measured, predicted = {}, {}
    for m in counts:
        errors = [sampled_gradient(model, features, rewards, m, seed, greedy_rewards) - exact for seed in range(5)]
        measured[m] = (numpy.mean([(e ** 2).sum() for e in errors]) ** 0.5) / numpy.linalg.norm(exact)
        predicted[m] = (variances["b = greedy reward"] / m) ** 0.5 / numpy.linalg.norm(exact)
        ctx.check(0.5 < measured[m] / predicted[m] < 2, f"M = {m}: error {measured[m]:.3f}, Var/M gives "
                                                        f"{predicted[m]:.3f}")
    return {"greedy reward x100 per image": numpy.round(100 * greedy_rewards, 2),
            "E[r] x100 per image": numpy.round(100 * baselines["b = E[r], the mean reward"], 2)} | {
        f"variance of one sample's estimate / |grad J|^2, {label}":
            round(float(v / (exact ** 2).sum()), 3) for label, v in variances.items()} | {
        f"M = {m:5d} samples per image, b = greedy: relative error measured, predicted":
            (round(float(measured[m]), 3), round(float(predicted[m]), 3)) for m in counts}


def step_9_cross_entropy_first(ctx):
    """Self-critical training starts from a cross-entropy model: a short run of LRCN on the shapes.

    Sampling from a random model gives word salad whose rewards are all
    near 0, so there is nothing to prefer: SCST starts from a model trained
    with cross-entropy (`train --scst --init CKPT`). Here: an LRCN over the
    pooled features of a small CNN that trains with it (as in lesson 11),
    for a short run on the synthetic shapes, scored on the dev pictures.
    """
    sizes = (300, 2) if ctx.quick else (1000, 2)                            # training pictures, epochs
    ctx.splits = shapes_splits(n_train=sizes[0], n_val=50, n_test=50, seed=0, image_size=IMAGE_SIZE)
    ctx.vocab = Vocabulary.build(ctx.splits["train"].all_tokens(), min_count=1)
    ctx.encoder = TrainableEncoder.small_cnn(channels=(16, 32), image_size=IMAGE_SIZE, seed=0)
    config = {"model": "lrcn", "vocab_size": len(ctx.vocab), "feature_dim": ctx.encoder.feature_dim("pooled"),
              "wordvec_dim": 32, "hidden_dim": 64, "dropout": 0.0,
              "null_id": ctx.vocab.null_id, "start_id": ctx.vocab.start_id, "end_id": ctx.vocab.end_id}
    ctx.model = build(config, seed=0)
    trainer = Trainer(ctx.model, ctx.vocab, ctx.encoder, ctx.splits["train"], ctx.splits["dev"],
                      TrainConfig(epochs=sizes[1], batch_size=32, lr=3e-3, val_images=50, log_every=30.0),
                      ctx.out_dir / "lesson17_cross_entropy")
    history = ctx.fit(trainer)
    ctx.cross_entropy_dev_loss = history[-1]["dev_loss"]
    ctx.before, _ = generate_captions(ctx.model, ctx.encoder, ctx.splits["dev"].head(SHOWN), ctx.vocab)
    return {"training pictures, epochs": sizes, "dev loss per epoch": [round(r["dev_loss"], 3) for r in history],
            "dev BLEU-4 x100 per epoch": [round(100 * r["dev_bleu"][3], 1) for r in history]}


SHOWN = 6    # dev pictures drawn with their captions before and after self-critical training


def caption_sheet(images, captions, path, tile=96):
    """A PNG: each picture (3, h, w) uint8 enlarged to tile x tile, its lines of text beside it."""
    width = tile + 8 + 7 * max(len(line) for lines in captions for line in lines)
    sheet = Image.new("RGB", (width, len(images) * (tile + 6)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i, (image, lines) in enumerate(zip(images, captions)):
        y = i * (tile + 6)
        sheet.paste(Image.fromarray(image.transpose(1, 2, 0)).resize((tile, tile), Image.NEAREST), (0, y))
        for k, line in enumerate(lines):
            draw.text((tile + 8, y + 8 + 16 * k), line, fill=(0, 0, 0) if k < 2 else (90, 90, 90))
    sheet.save(path)
    return path


def step_10_self_critical_run(ctx):
    """Self-critical training on CIDEr-D: the reward rises, and so does the dev score.

    `SelfCriticalTrainer` (captioning.scst) per step: the greedy captions
    of a batch of 25 training pictures (the baseline), 5 sampled captions per
    picture, their CIDEr-D against the picture's references (document
    frequencies of the training references), then the policy gradient
    through the decoder (the CNN stays frozen) and an Adam step. Its
    `train_step` is printed below: the gradient comes from the model's
    `forward_backward` with per-token weights (r - b) * mask, the same
    gradient as step 6's `policy_gradient`. Before the first step the
    trainer scores the starting model on dev (epoch 0). The dev
    cross-entropy loss is measured too: it is NOT what this training
    optimises. curves.png in the run folder draws reward and dev CIDEr-D;
    lesson17_captions.png shows dev pictures with their captions before
    and after, each with its CIDEr-D x100 against the picture's references.
    """
    ctx.show_source(SelfCriticalTrainer.train_step)
    config = SCSTConfig(epochs=2, batch_size=25, lr=5e-4, samples=5, val_images=50, log_every=30.0)
    out = ctx.out_dir / "lesson17_self_critical"
    trainer = SelfCriticalTrainer(ctx.model, ctx.vocab, ctx.encoder, ctx.splits["train"], ctx.splits["dev"],
                                  config, out)
    history = ctx.fit(trainer)
    start, end = history[0]["dev_cider"], history[-1]["dev_cider"]
    rewards = [r["train_reward"] for r in history[1:]]
    dev_loss = trainer.dev_loss()
    ctx.check(end > start, f"dev CIDEr-D rises: {start:.3f} -> {end:.3f}")
    ctx.check(rewards[-1] > rewards[0], f"the mean reward of the sampled captions rises: {rewards}")
    ctx.check((out / "curves.png").is_file(), "curves.png was drawn")
    moved = "rose" if dev_loss > ctx.cross_entropy_dev_loss else "fell"
    after, _ = generate_captions(ctx.model, ctx.encoder, ctx.splits["dev"].head(SHOWN), ctx.vocab)
    cider = CiderD(ctx.splits["dev"].references)          # per picture, document frequencies of all dev pictures
    lines = [[f"{name} ({100 * cider.scores([i], [words])[0]:.0f}): {' '.join(words)}"
              for name, words in (("cross-entropy", ctx.before[i]), ("self-critical", after[i]))]
             + [f"human: {ctx.splits['dev'].captions[i][0]}"] for i in range(SHOWN)]
    sheet = caption_sheet(ctx.splits["dev"].images[:SHOWN], lines, ctx.output_path("lesson17_captions.png"))
    print("\n".join(f"dev picture {i}: " + "\n               ".join(rows) for i, rows in enumerate(lines[:3])))
    return {"dev CIDEr-D x100 (greedy), start and after each epoch": [round(100 * r["dev_cider"], 1) for r in history],
            "mean reward x100 of the sampled captions, per epoch": [round(100 * r, 1) for r in rewards],
            "mean reward x100 of the greedy captions, per epoch": [round(100 * r["train_greedy"], 1)
                                                                  for r in history[1:]],
            f"dev cross-entropy loss: before, after (it {moved})": (round(ctx.cross_entropy_dev_loss, 3),
                                                                   round(dev_loss, 3)),
            "pictures": f"{out / 'curves.png'} (reward and dev CIDEr-D), {sheet} (captions before and after)"}


def readme_table(text, heading_words, columns=()):
    """The Markdown table of the first README section whose heading contains all of `heading_words`
    and whose table's header row names all of `columns`: (heading, table lines), or (None, [])."""
    for section in re.split(r"\n(?=#{2,4} )", text):
        heading = section.splitlines()[0].lstrip("# ").strip()
        lines = [line for line in section.splitlines() if line.startswith("|")]
        if lines and all(word.lower() in heading.lower() for word in heading_words) \
                and all(column in lines[0] for column in columns):
            return heading, lines
    return None, []


def step_11_on_flickr8k(ctx):
    """On Flickr8k: the README's results table, where each row comes with the command that made it.

    The steps above show why each change can help, on toy sizes. What they
    bring on the real data - LRCN against Show and Tell and Show, Attend and
    Tell, frozen against fine-tuned EfficientNet-Lite0, cross-entropy
    against self-critical training - is measured on the official Flickr8k
    test split in the README. This step prints its table as the README
    stands: the table of the section on Flickr8k results when there is one
    (else the shipped captioner's); none of its numbers is typed into this
    lesson. The commands behind the recipes: `features --fine-tune-blocks
    K`, `train --model lrcn`, `train --fine-tune-blocks K`, `train --scst
    --init CKPT`.
    """
    text = README.read_text(encoding="utf-8")
    heading, lines = readme_table(text, ["flickr8k", "results"])
    if heading is None:                     # before the table of every recipe: the shipped captioner's row
        heading, lines = readme_table(text, [], columns=["BLEU-4", "CIDEr-D"])
    ctx.check(heading is not None and len(lines) >= 3, "the README has a Flickr8k results table")
    print(f"README.md, section \"{heading}\":")
    print("\n".join("  " + line for line in lines))
    return {"rows (models and recipes)": len(lines) - 2}


def grade_policy_gradient(ctx, mine, reference):
    """Your loss and dscores against the reference on random captions (N=5, T=6, V=7), and dscores
    against finite differences of your loss."""
    gen = ctx.rng(30)
    scores = gen.standard_normal((5, 6, 7))
    sampled = gen.integers(0, 7, size=(5, 6))
    mask = backend.asarray(numpy.arange(6)[None, :] < numpy.array([6, 1, 3, 0, 5])[:, None])
    advantages = gen.normal(0.0, 2.0, 5)
    loss, dscores = mine.policy_gradient(scores, sampled, mask, advantages)
    wanted_loss, wanted = reference(scores, sampled, mask, advantages)
    ctx.check(abs(loss - wanted_loss) < 1e-10 * max(1.0, abs(wanted_loss)),
              f"your loss is {loss}, the reference's {wanted_loss}")
    ctx.check(dscores.shape == wanted.shape and rel_error(dscores, wanted) < 1e-9,
              f"dscores differ from the reference's (relative error {rel_error(dscores, wanted):.1e})")
    numeric = eval_numerical_gradient(lambda: mine.policy_gradient(scores, sampled, mask, advantages)[0], scores)
    ctx.check(rel_error(dscores, numeric) < 1e-7, "dscores is not the gradient of your loss")
    return f"loss and dscores match the reference (relative error {rel_error(dscores, wanted):.1e})"


if __name__ == "__main__":  # python lessons/lesson_17_better_captions.py [--no-pause] [--quick]
    import pathlib
    import sys
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
    import run_lesson
    sys.exit(run_lesson.main([__file__] + sys.argv[1:]))
