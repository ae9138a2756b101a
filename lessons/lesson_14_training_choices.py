"""Lesson 14: training choices - exposure bias, scheduled sampling, overfitting, dropout, batchnorm.

Lessons 9, 11 and 13 train captioners one way: teacher forcing, Adam,
clipping. This lesson looks at choices behind that recipe and measures
what each does, on the synthetic shapes (48 x 48 pictures with one or two
objects, caption 0 only: it is a deterministic function of the picture, so
"the right next word" is always defined):

  - teacher forcing trains every word on the TRUE words before it, but a
    caption is written from the model's OWN words: exposure bias (Bengio et
    al. 2015, Ranzato et al. 2016), and scheduled sampling, one cure;
  - a small training set: training loss falls, dev loss turns back up
    (overfitting), and dropout (Srivastava et al. 2014) as a cure;
  - batch normalisation (Ioffe & Szegedy 2015), used by both of our CNNs:
    what train and eval mode do, and why EfficientNet folds it into its convs.

(Exploding gradients and clipping: lesson 8, step 10.)

The encoder is a stand-in, so that everything trains in seconds: the mean
colour of each cell of the 3 x 3 grid the shapes are placed on, 27 numbers
per picture. It sees colours and places, and shapes only roughly.
"""
import math

import numpy
from PIL import Image, ImageDraw

from captioning.curves_png import save_training_curves
from captioning.data import Vocabulary, make_shapes_dataset
from captioning.data.batches import encode_captions
from captioning.data.images import normalize_images
from captioning.decoding import greedy_decode
from captioning.encoders import TrainableEncoder
from captioning.encoders.efficientnet import EfficientNetLite0
from captioning.metrics import bleu
from captioning.models import ShowAndTell
from nn import backend
from nn.conv import conv_forward
from nn.gradcheck import rel_error
from nn.layers import BatchNorm2d, Conv2d
from nn.losses import temporal_softmax_loss
from nn.optim import Adam, clip_grad_norm
from nn.pool import avg_pool_forward

TITLE = "Training choices: exposure bias and scheduled sampling, overfitting and dropout, batchnorm"
SECONDS = 45
QUICK_SECONDS = 30

# `python run_lesson.py 14 --exercise`: write it yourself (graded by grade_mix_inputs below and by step 4)
EXERCISES = ["mix_inputs"]
EXERCISE_IMPORTS = ["from nn import backend"]

IMAGE_SIZE = 48          # 3 x 3 cells of 16 x 16 pixels
MAX_WORDS = 14           # the longest shapes caption


def mix_inputs(true_words, own_words, p, gen):
    """Scheduled sampling's decoder inputs: true words, each replaced by the model's own word with probability p.

    Position 0 is <START> and is never replaced (the model has no word of its
    own there). Draw the coin flips with ONE call, `gen.random(true_words.shape)`
    (uniform in [0, 1), an array on the backend), and replace the word where
    the draw is below p.

    Inputs:
    - true_words: (N, T) int word ids, the caption's words: <START> w1 .. w(T-1)
    - own_words: (N, T) int word ids the model chose at each position
    - p: probability of taking the model's word, 0 <= p <= 1
    - gen: a random generator (ctx.rng(seed)) with .random(shape)
    Returns: (N, T) int word ids
    """
    replace = gen.random(true_words.shape) < p
    replace[:, 0] = False                            # <START> stays
    return backend.xp().where(replace, own_words, true_words)


def one_or_two_objects(n, seed, name):
    """The pictures among n shapes pictures (48 x 48, caption 0 only) that hold one or two objects."""
    split = make_shapes_dataset(n, seed=seed, image_size=IMAGE_SIZE, captions_per_image=1, name=name)
    return split.subset([i for i, objects in enumerate(split.objects) if len(objects) <= 2])


def cell_colours(split, block=16):
    """(N, 3 * (48 / block)^2) features: the mean colour of each block x block square of a 48 x 48 picture.

    With block = 16 (the default) these are the 3 x 3 cells the shapes are placed in: 27 numbers, a
    stand-in encoder.
    """
    images = normalize_images(split.images)                               # (N, 3, 48, 48) in [0, 1]
    cells, _ = avg_pool_forward(images, {"pool_height": block, "pool_width": block, "stride": block})
    return cells.reshape(len(split), -1)


def first_captions(split, vocab):
    """(N, T+1) word ids of every picture's caption 0, on the backend: <START> w1 .. wn <END> <NULL>..."""
    return backend.asarray(encode_captions(split, vocab, MAX_WORDS).captions)


def new_model(ctx, feature_dim=27, dropout=0.0):
    config = {"vocab_size": len(ctx.vocab), "feature_dim": feature_dim, "wordvec_dim": 48, "hidden_dim": 128,
              "dropout": dropout, "null_id": ctx.vocab.null_id, "start_id": ctx.vocab.start_id,
              "end_id": ctx.vocab.end_id}
    return ShowAndTell(config, seed=0)


def train_step(model, features, captions, optimizer, p=0.0, gen=None):
    """One minibatch step; with p > 0 a scheduled-sampling step. Returns the loss.

    Scheduled sampling needs the model's own words: one teacher-forced pass
    without gradients gives the most probable word at every position (after
    the true prefix); `mix_inputs` puts some of them in place of the true
    inputs; the loss and gradients come from a second pass on the mixed
    inputs, against the TRUE next words. (Bengio et al. feed each own word as
    it is sampled, step by step; this two-pass version is the one that runs
    as one batched LSTM, Duckworth et al. 2019.)
    """
    inputs, targets = captions[:, :-1], captions[:, 1:]
    if p > 0:
        scores, _ = model._forward(features, inputs, None)
        own = backend.xp().concatenate([inputs[:, :1], scores[:, :-1].argmax(axis=2)], axis=1)
        inputs = mix_inputs(inputs, own, p, gen)
    scores, cache = model._forward(features, inputs, None)
    loss, dscores = temporal_softmax_loss(scores, targets, targets != model.null_id)
    model.grads, _ = model._backward(dscores, cache)
    clip_grad_norm(model, max_norm=5.0)
    optimizer.step()
    return float(loss)


def prefix_losses(model, features, captions):
    """Loss of every true next word, after the TRUE words and after the model's OWN words.

    Both runs step the decoder one word at a time (`decode_step`, as
    decoding does). After the true prefix: the next input is the true word
    (what training sees). After its own prefix: the next input is the word
    the model found most probable (what greedy decoding sees); the loss is
    still that of the TRUE next word. Returns {"true": (N, T), "own": (N, T)}
    losses in nats, the mask (N, T) of real words, and own_wrong (N, T): the
    model's own word differed from the true one.
    """
    xp = backend.xp()
    rows, targets = xp.arange(len(captions)), captions[:, 1:]
    result = {}
    for prefix in ("true", "own"):
        state, word, losses, wrong = model.init_decode_state(features), captions[:, 0], [], []
        for t in range(targets.shape[1]):
            log_probs, state, _ = model.decode_step(word, state)
            own_word = log_probs.argmax(axis=1)
            losses.append(-log_probs[rows, targets[:, t]])
            wrong.append(own_word != targets[:, t])
            word = targets[:, t] if prefix == "true" else own_word
        result[prefix] = backend.to_numpy(xp.stack(losses, axis=1))
        if prefix == "own":
            result["own_wrong"] = backend.to_numpy(xp.stack(wrong, axis=1))
    result["mask"] = backend.to_numpy(targets != model.null_id)
    return result


def greedy_captions(ctx, model, features):
    """Greedy decoding (lesson 10) of every picture, with dropout off: lists of words."""
    decoded = greedy_decode(model.eval(), features, ctx.vocab.start_id, ctx.vocab.end_id, max_length=MAX_WORDS + 1)
    model.train()
    return [ctx.vocab.decode(sequence) for sequence in decoded.sequences]


def greedy_bleu4(ctx, model, features, split):
    return bleu(split.references, greedy_captions(ctx, model, features))[3]


def step_1_data(ctx):
    """The data: shapes pictures with one or two objects, caption 0 of each, the 27-number stand-in encoder.

    Caption 0 names every object with its size, colour and shape, in reading
    order, and where it is ("at the top left", "to the left of", "above"),
    so for each picture there is exactly one right caption. The vocabulary
    is built from this training split; the smaller one of step 6 uses the
    same word ids.
    """
    drawn, ctx.epochs = (3000, 10) if ctx.quick else (4500, 12)
    train = one_or_two_objects(drawn, seed=3, name="train")
    ctx.dev = one_or_two_objects(300, seed=4, name="dev")
    ctx.n_train = len(train)
    ctx.vocab = Vocabulary.build(train.all_tokens(), min_count=1)
    ctx.train_features, ctx.train_captions = cell_colours(train), first_captions(train, ctx.vocab)
    ctx.dev_features, ctx.dev_captions = cell_colours(ctx.dev), first_captions(ctx.dev, ctx.vocab)
    ids = backend.to_numpy(ctx.train_captions[0])
    print("teacher forcing: at each position the input is the TRUE previous word, the target the true next word")
    for name, row in (("input ", ids[:-1]), ("target", ids[1:])):
        print(f"  {name}: {' '.join(ctx.vocab.id_to_word[int(i)] for i in row if i != ctx.vocab.null_id)}")
    return {"training pictures": ctx.n_train, "dev pictures": len(ctx.dev), "features per picture":
            ctx.train_features.shape[1], "captions (ids)": ctx.train_captions.shape, "vocabulary": len(ctx.vocab)}


def train_bare(ctx, model, p_max=0.0):
    """ctx.epochs epochs of minibatches of 50, Adam; p ramps linearly from 0 to p_max over the run."""
    optimizer, order_gen, gen = Adam(model, lr=1e-2), numpy.random.default_rng(0), ctx.rng(1)
    steps, step = ctx.epochs * math.ceil(ctx.n_train / 50), 0
    for epoch in range(ctx.epochs):
        order = order_gen.permutation(ctx.n_train)
        for start in range(0, ctx.n_train, 50):
            batch = backend.asarray(order[start:start + 50])
            train_step(model, ctx.train_features[batch], ctx.train_captions[batch], optimizer,
                       p=p_max * step / steps, gen=gen)
            step += 1
    return model


def step_2_teacher_forcing(ctx):
    """Train with teacher forcing, as every lesson so far did.

    The bare loop of lesson 9 (minibatches, clipping, Adam), here as
    `train_step` (printed below): with p = 0 it is plain teacher forcing.
    Its scheduled-sampling branch is for step 5. Its captions of dev
    pictures (greedy decoding) are far from perfect: the 27 numbers show
    colours and places but shapes only roughly, and a model trained for
    seconds often gets the second object wrong.
    """
    ctx.show_source(train_step)
    ctx.forced = train_bare(ctx, new_model(ctx))
    captions = greedy_captions(ctx, ctx.forced, ctx.dev_features)
    ctx.forced_bleu = bleu(ctx.dev.references, captions)[3]
    for i in range(3):
        print(f"dev picture {i}: true:  {ctx.dev.captions[i][0]}\n               model: {' '.join(captions[i])}")
    return {"epochs": ctx.epochs, "dev loss per caption (teacher-forced)":
            ctx.forced.loss(ctx.dev_features, ctx.dev_captions)[0],
            "dev BLEU-4 x100 (greedy)": round(100 * ctx.forced_bleu, 1)}


def summarise(losses):
    """Mean loss per word after the true and after the own prefix, and after the model's first own mistake."""
    mask = losses["mask"]
    first_mistake = numpy.cumsum(losses["own_wrong"] & mask, axis=1) > 0
    after = mask & numpy.roll(first_mistake, 1, axis=1) & (numpy.arange(mask.shape[1]) > 0)
    return {"true prefix": float(losses["true"][mask].mean()), "own prefix": float(losses["own"][mask].mean()),
            "own prefix, after its first mistake": float(losses["own"][after].mean()),
            "true prefix, same words": float(losses["true"][after].mean())}


def step_3_exposure_bias(ctx):
    """Exposure bias: the model has only ever seen true prefixes; decoding gives it its own.

    Measured on the dev pictures by `prefix_losses` (printed below):
    the loss of each true next word, once after the true words and once
    after the model's own greedy words. Before its first mistake the two
    are the same words and the same loss. After it, the model is in a state
    training never showed it (its own wrong word as input), and the loss
    of the true continuation is compared with that after the true prefix at
    the same positions (and with log V, the loss of guessing uniformly).
    """
    ctx.show_source(prefix_losses)
    ctx.forced_losses = prefix_losses(ctx.forced, ctx.dev_features, ctx.dev_captions)
    ctx.forced_summary = summarise(ctx.forced_losses)
    mask = ctx.forced_losses["mask"]
    per_position = {prefix: numpy.array([ctx.forced_losses[prefix][:, t][mask[:, t]].mean()
                                         for t in range(mask.shape[1]) if mask[:, t].sum() >= 20])
                    for prefix in ("true", "own")}
    s = ctx.forced_summary
    ctx.check(s["own prefix"] > 2 * s["true prefix"], "the own prefix costs far more than the true one")
    ctx.check(s["own prefix, after its first mistake"] > 3 * s["true prefix, same words"],
              "after its own mistake the true continuation costs several times more")
    return {"loss per word, position by position, after the true prefix": per_position["true"].round(2),
            "the same after the model's own words": per_position["own"].round(2),
            **{f"mean loss per word, {k}": round(v, 3) for k, v in s.items()},
            "log V (guessing uniformly)": round(math.log(len(ctx.vocab)), 3),
            "dev captions with a mistake of its own": f"{int((ctx.forced_losses['own_wrong'] & mask).any(axis=1).sum())} "
                                                      f"of {len(ctx.dev)}"}


def step_4_mix_inputs(ctx):
    """Scheduled sampling's idea: during training, sometimes feed the model its own word.

    Scheduled sampling (Bengio et al. 2015) replaces each input word, with
    probability p, by the word the model itself would have said, so that
    training sees prefixes with the model's own mistakes in them; p grows
    during training (the model's words are nonsense at first). `mix_inputs`
    (top of this file; `--exercise` lets you write it) does the replacing.
    Shown on one dev caption with the teacher-forced model's own words.
    """
    inputs = ctx.dev_captions[:1, :-1]
    scores, _ = ctx.forced._forward(ctx.dev_features[:1], inputs, None)
    own = backend.xp().concatenate([inputs[:, :1], scores[:, :-1].argmax(axis=2)], axis=1)
    mixed = mix_inputs(inputs, own, 0.5, ctx.rng(2))
    real = backend.to_numpy(inputs[0] != ctx.vocab.null_id)
    def words(row):
        return " ".join(ctx.vocab.id_to_word[int(i)] for i in backend.to_numpy(row)[real])
    big_true = backend.asarray(numpy.tile(numpy.arange(12), (1000, 1)))
    big_mixed = mix_inputs(big_true, big_true + 100, 0.3, ctx.rng(3))      # "own words" = true + 100
    fraction = float((big_mixed[:, 1:] >= 100).mean())
    ctx.check(bool((big_mixed[:, 0] < 100).all()), "position 0 (<START>) is never replaced")
    ctx.check(bool((mix_inputs(inputs, own, 0.0, ctx.rng(2)) == inputs).all()), "p = 0 is teacher forcing")
    ctx.check(bool((mix_inputs(inputs, own, 1.0, ctx.rng(2)) == own).all()), "p = 1 takes every own word")
    ctx.check(abs(fraction - 0.3) < 0.01, f"with p = 0.3 about 30% of the words are replaced ({fraction:.3f})")
    return {"true inputs": words(inputs[0]), "own words (after the true prefix)": words(own[0]),
            "mixed, p = 0.5": words(mixed[0]),
            f"share replaced with p = 0.3 ({big_mixed[:, 1:].size} words)": round(fraction, 4)}


def step_5_scheduled_sampling(ctx):
    """Train the same model again, with scheduled sampling: p from 0 up to 0.5.

    Same data, seed and number of steps; only the inputs differ. Then the
    measurement of step 3 again: the model has now seen prefixes with its
    own mistakes in them, and the true continuation after them costs less.
    Its loss after the TRUE prefix can rise a little (it trusts its input
    word less) or fall (the mixed inputs also vary the training data); the
    numbers say which happened here. Whether captions get better depends
    on the task (Huszar 2015 shows that its objective is not consistent;
    BLEU is printed, not promised).
    """
    ctx.sampled = train_bare(ctx, new_model(ctx), p_max=0.5)
    sampled = summarise(prefix_losses(ctx.sampled, ctx.dev_features, ctx.dev_captions))
    forced = ctx.forced_summary
    ctx.check(sampled["own prefix"] < forced["own prefix"], "scheduled sampling lowers the own-prefix loss")
    ctx.check(sampled["own prefix, after its first mistake"] < forced["own prefix, after its first mistake"],
              "it recovers better after its own mistakes")
    rows = {}
    for key in forced:
        rows[f"{key}: teacher forcing, scheduled sampling"] = f"{forced[key]:.3f}  {sampled[key]:.3f}"
    rows["dev BLEU-4 x100 (greedy): teacher forcing, scheduled sampling"] = (
        f"{100 * ctx.forced_bleu:.1f}  {100 * greedy_bleu4(ctx, ctx.sampled, ctx.dev_features, ctx.dev):.1f}")
    return rows


def overfit_run(ctx, train, dev, dropout, epochs):
    """Train on a small set (minibatches of 20). Returns the Trainer-style records save_training_curves
    draws (the running mean of each epoch's minibatch losses; per epoch the dev loss and dev BLEU-4),
    steps per epoch, and the training loss at the end in eval mode (dropout off, as for the dev loss)."""
    features, captions = cell_colours(train, block=4), first_captions(train, ctx.vocab)
    dev_features, dev_captions = cell_colours(dev, block=4), first_captions(dev, ctx.vocab)
    model = new_model(ctx, feature_dim=features.shape[1], dropout=dropout)
    optimizer, order_gen = Adam(model, lr=1e-2), numpy.random.default_rng(0)
    trace, history, step, steps_per_epoch = [], [], 0, math.ceil(len(train) / 20)
    for epoch in range(1, epochs + 1):
        order, losses = order_gen.permutation(len(train)), []
        for start in range(0, len(train), 20):
            batch = backend.asarray(order[start:start + 20])
            step += 1
            losses.append(model.train().loss(features[batch], captions[batch], dropout_seed=step)[0])
            clip_grad_norm(model, max_norm=5.0)
            optimizer.step()
            trace.append([step, float(numpy.mean(losses))])
        model.eval()
        history.append({"epoch": epoch, "steps": steps_per_epoch, "dev_loss": model.loss(dev_features, dev_captions)[0],
                        "dev_bleu": [0, 0, 0, greedy_bleu4(ctx, model, dev_features, dev)]})
    return trace, history, steps_per_epoch, model.eval().loss(features, captions)[0]


def step_6_overfitting_and_dropout(ctx):
    """Overfitting: about 100 training pictures, many epochs; train and dev loss drift apart. Dropout slows it.

    The features here are finer, 4 x 4-pixel squares (432 numbers, more
    than there are training pictures: enough to tell each one apart), and
    the minibatches hold 20 captions. With few examples the model can learn
    them by heart: the training loss keeps falling, while the loss on dev
    pictures it never trains on stops falling and rises. The epoch of the
    lowest dev loss is the model to keep (the Trainer's best.npz, lesson
    13). Dropout (p = 0.5 on the LSTM's output before the word scores,
    ShowAndTell's `dropout`) zeroes random units at every training step, so
    the model cannot rely on any one of them; at evaluation it is off
    (`model.eval()`). The dev loss is that
    of the first 100 dev pictures. The PNG shows both runs, drawn by
    `captioning.curves_png.save_training_curves` (the picture `python -m
    captioning train` writes): the training loss there is the running mean
    over each epoch's minibatches, with dropout on, so for p = 0.5 it is
    noisier and higher than the model's real training loss; the numbers
    printed measure both losses at the end with dropout off. (Dev BLEU-4,
    right, of so weak a model on 100 pictures jumps from epoch to epoch.)
    """
    epochs = 30 if ctx.quick else 40
    train = one_or_two_objects(150, seed=5, name="train")
    runs = {p: overfit_run(ctx, train, ctx.dev.head(100), p, epochs) for p in (0.0, 0.5)}
    panels, shown = [], 4                                 # epochs 1-4 left out: their large losses squash the rest
    for p, (trace, history, steps_per_epoch, _) in runs.items():
        path = ctx.output_path(f"lesson14_curves_dropout{p:g}.png")
        panels.append(Image.open(save_training_curves(path, trace[shown * steps_per_epoch:], history[shown:],
                                                      steps_per_epoch)))
    sheet = Image.new("RGB", (panels[0].width, 2 * panels[0].height + 20), "white")
    for k, (panel, p) in enumerate(zip(panels, runs)):
        sheet.paste(panel, (0, k * (panel.height + 20) + 20))
        ImageDraw.Draw(sheet).text((10, k * (panel.height + 20) + 4), f"dropout p = {p:g} (epochs {shown + 1}-"
                                   f"{epochs})", fill=(0, 0, 0))
    path = ctx.output_path("lesson14_overfitting.png")
    sheet.save(path)
    results = {}
    for p, (_, history, _, train_loss) in runs.items():
        dev = [r["dev_loss"] for r in history]
        best = int(numpy.argmin(dev))
        results[p] = {"best dev loss": dev[best], "at epoch": best + 1, "last dev loss": dev[-1],
                      "last training loss (eval mode)": train_loss}
    plain, dropped = results[0.0], results[0.5]
    ctx.check(plain["last dev loss"] > plain["best dev loss"] + 0.5, "without dropout the dev loss turns back up")
    ctx.check(plain["last training loss (eval mode)"] < plain["last dev loss"] - 2, "training loss far below dev loss")
    ctx.check(dropped["last dev loss"] < plain["last dev loss"], "with dropout the dev loss ends lower")
    gap = {p: r["last dev loss"] - r["last training loss (eval mode)"] for p, r in results.items()}
    ctx.check(gap[0.5] < gap[0.0], "with dropout train and dev stay closer")
    return {"picture": str(path), "training pictures": len(train), "epochs": epochs,
            **{f"dropout {p:g}: {k}": (round(v, 3) if isinstance(v, float) else v)
               for p, r in results.items() for k, v in r.items()},
            **{f"dropout {p:g}: dev minus training loss at the end": round(g, 3) for p, g in gap.items()}}


def step_7_batchnorm_train_and_eval(ctx):
    """Batch normalisation: in training, each output depends on the whole batch.

    BatchNorm2d normalises every channel by the mean and variance over the
    batch (and the positions), then scales by gamma and shifts by beta:
        out = gamma * (x - mean_batch) / sqrt(var_batch + eps) + beta
    So in train mode one picture's output changes with its batchmates. In
    eval mode it uses running averages collected during training instead:
    a fixed affine map per channel, the same for a picture alone or in any
    batch. Forgetting `.eval()` at test time makes captions depend on which
    pictures happen to share the batch.
    """
    gen = ctx.rng(10)
    layer = BatchNorm2d(4, dtype=numpy.float64)
    picture = 3 + 2 * gen.standard_normal((1, 4, 5, 5))
    batch_a = backend.xp().concatenate([picture, 3 + 2 * gen.standard_normal((7, 4, 5, 5))])
    batch_b = backend.xp().concatenate([picture, 6 + 1 * gen.standard_normal((7, 4, 5, 5))])
    out_a, out_b = layer.train()(batch_a), layer(batch_b)
    per_channel = backend.to_numpy(out_a.transpose(1, 0, 2, 3).reshape(4, -1))
    changed = float(abs(out_a[0] - out_b[0]).max())
    ctx.layer = layer
    eval_a, eval_b, alone = layer.eval()(batch_a)[0], layer(batch_b)[0], layer(picture)[0]
    same = float(max(abs(eval_a - eval_b).max(), abs(eval_a - alone).max()))
    ctx.check(abs(per_channel.mean(axis=1)).max() < 1e-6 and abs(per_channel.std(axis=1) - 1).max() < 1e-3,
              "train mode: every channel has mean 0 and std 1 over the batch")
    ctx.check(changed > 0.1 and same == 0, "train mode depends on the batchmates, eval mode does not")
    encoder = TrainableEncoder.small_cnn(channels=(8, 16), image_size=IMAGE_SIZE, seed=0, dtype=numpy.float64)
    images = ctx.dev.images[:8]
    in_batch = encoder.train().encode(images, "pooled", numpy.float64)[0]
    by_itself = encoder.encode(images[:1], "pooled", numpy.float64)[0]
    cnn_changed = float(abs(in_batch - by_itself).max())
    ctx.check(cnn_changed > 1e-3, "the small CNN in train mode gives a picture other features alone")
    return {"train mode, channel means over the batch": per_channel.mean(axis=1).round(6),
            "train mode, channel stds": per_channel.std(axis=1).round(4),
            "picture 0 in two batches, train mode: largest difference": round(changed, 4),
            "eval mode (in batch a, in batch b, alone): largest difference": same,
            "small CNN (train mode), picture 0 in a batch of 8 vs alone: largest feature difference":
                round(cnn_changed, 4)}


def step_8_running_statistics(ctx):
    """The running statistics: exponential averages of the batch means and variances.

    After every training batch: running = momentum * running + (1 - momentum)
    * batch statistic (momentum 0.9 here: the newest batch counts 10%). They
    start at mean 0 and variance 1, so early on they are wrong: after k
    batches from data of mean 3 the running mean is 3 * (1 - 0.9^k). A
    model evaluated before its statistics have settled sees other numbers
    than it was trained on.
    """
    layer, gen, history = BatchNorm2d(4, dtype=numpy.float64).train(), ctx.rng(11), []
    for k in range(1, 61):
        layer(3 + 2 * gen.standard_normal((8, 4, 5, 5)))
        history.append(float(layer.buffers["running_mean"].mean()))
    predicted = [3 * (1 - 0.9 ** k) for k in (1, 5, 20, 60)]
    measured = [history[k - 1] for k in (1, 5, 20, 60)]
    ctx.check(all(abs(m - p) < 0.1 for m, p in zip(measured, predicted)), "running mean = 3 (1 - 0.9^k)")
    ctx.check(abs(float(layer.buffers["running_var"].mean()) - 4) < 0.3, "the running variance approaches 2^2")
    return {"after k batches": [1, 5, 20, 60], "running mean (averaged over channels)": numpy.round(measured, 3),
            "3 (1 - 0.9^k)": numpy.round(predicted, 3),
            "running variance after 60 batches (data: 4)": round(float(layer.buffers["running_var"].mean()), 3)}


def step_9_folding_into_the_conv(ctx):
    """In eval mode a batchnorm is an affine map, so it folds into the conv before it.

    conv then batchnorm: gamma * (w * x + b - mean) / sqrt(var + eps) + beta.
    With scale = gamma / sqrt(var + eps) that is one conv with
        w' = w * scale (per output channel),  b' = beta + (b - mean) * scale,
    one pass over the activations instead of two. EfficientNet-Lite0 is
    loaded this way (`_conv_unit`, printed below: its convs have no bias, so
    b = 0). Checked here on a conv with random weights and the trained
    statistics of a batchnorm.
    """
    ctx.show_source(EfficientNetLite0._conv_unit)
    gen = ctx.rng(12)
    conv = Conv2d(3, 4, 3, pad=1, dtype=numpy.float64, seed=0)
    bn = BatchNorm2d(4, eps=1e-3, dtype=numpy.float64)
    bn.params["gamma"][...], bn.params["beta"][...] = 1 + 0.5 * gen.standard_normal(4), gen.standard_normal(4)
    bn.train()
    for _ in range(30):                               # running statistics of conv outputs
        bn(conv(gen.standard_normal((8, 3, 6, 6))))
    x = gen.standard_normal((2, 3, 6, 6))
    two_layers = bn.eval()(conv(x))
    scale = bn.params["gamma"] / backend.xp().sqrt(bn.buffers["running_var"] + bn.eps)
    w_folded = conv.params["w"] * scale.reshape(-1, 1, 1, 1)
    b_folded = bn.params["beta"] + (conv.params["b"] - bn.buffers["running_mean"]) * scale
    one_conv, _ = conv_forward(x, w_folded, b_folded, {"stride": 1, "pad": 1})
    difference = rel_error(one_conv, two_layers)
    ctx.check(difference < 1e-12, "the folded conv equals conv + batchnorm (eval)")
    return {"scale = gamma / sqrt(running_var + eps)": backend.to_numpy(scale).round(4),
            "folded conv vs conv + batchnorm: relative error": difference}


def grade_mix_inputs(ctx, mine, reference):
    """Your mixed inputs against the reference's (same seeds), and their statistics."""
    gen = ctx.rng(30)
    true_words = backend.asarray(gen.integers(3, 20, size=(50, 9)))
    own_words = backend.asarray(gen.integers(3, 20, size=(50, 9)))
    for p in (0.0, 0.1, 0.5, 1.0):
        yours, wanted = mine.mix_inputs(true_words, own_words, p, ctx.rng(31)), reference(
            true_words, own_words, p, ctx.rng(31))
        ctx.check(yours.shape == wanted.shape, f"p={p}: shape {yours.shape}, wanted {wanted.shape}")
        ctx.check(bool((yours == wanted).all()), f"p={p}: other words than the reference "
                                                 "(position 0 kept? one gen.random call? replaced where draw < p?)")
    return "the same words as the reference for p = 0, 0.1, 0.5 and 1"


if __name__ == "__main__":  # python lessons/lesson_14_training_choices.py [--no-pause] [--quick]
    import pathlib
    import sys
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
    import run_lesson
    sys.exit(run_lesson.main([__file__] + sys.argv[1:]))
