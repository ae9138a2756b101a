"""Lesson 11: attention - Show, Attend and Tell.

Show and Tell squeezes the whole image into one vector before the first
word. Show, Attend and Tell (Xu et al. 2015) keeps the CNN's grid of L
feature vectors and, before each word, computes weights alpha over the L
locations from the decoder's state: "where to look" for this word. The
context vector - the alpha-weighted mean of the grid - is fed to the LSTM
with the previous word. The weights are a softmax, so the whole model stays
differentiable and trains end to end with backpropagation ("soft" attention).

This lesson trains it (with a small CNN learning at the same time) on the
synthetic shapes, where we know which object every word names, and draws
the attention of each generated word as a PNG.
"""
import numpy

from captioning.attention_png import save_attention_png
from captioning.data import Vocabulary, shapes_splits
from captioning.data.shapes import COLORS, SHAPES
from captioning.metrics import bleu
from captioning.models import build
from captioning.encoders import TrainableEncoder
from captioning.generation import generate_captions
from captioning.training import Trainer, TrainConfig
import nn.attention
from nn import backend
from nn.attention import attention_backward, attention_forward
from nn.gradcheck import eval_numerical_gradient_array, rel_error

TITLE = "Attention (Show, Attend and Tell): where the model looks for each word, drawn as a PNG"
SECONDS = 50
QUICK_SECONDS = 11

# `python run_lesson.py 11 --exercise --quick`: write it yourself (graded by grade_attention_forward and step 1)
EXERCISES = ["attention_forward"]
EXERCISE_IMPORTS = ["from nn import backend"]

IMAGE_SIZE = 32          # small pictures keep the lesson to seconds; the CLI default uses 64


def step_1_attention_by_hand(ctx):
    """Soft attention for one hidden state, by hand and with `attention_forward`.

    For each location l:  e_l = w . tanh(a_l W_feat + b + h W_hidden)   (a score)
    alpha = softmax(e) over the L locations                              (where to look)
    context = sum_l alpha_l a_l                                          (what is seen there)
    """
    gen = ctx.rng(0)
    N, L, D, H, A = 2, 4, 3, 5, 6
    features, h = gen.standard_normal((N, L, D)), gen.standard_normal((N, H))
    W_feat, W_hidden = gen.standard_normal((D, A)), gen.standard_normal((H, A))
    b, w = gen.standard_normal(A), gen.standard_normal(A)
    context, alpha, _ = attention_forward(features, h, W_feat, W_hidden, b, w)

    xp = backend.xp()
    scores = xp.tanh(features @ W_feat + b + (h @ W_hidden)[:, None, :]) @ w      # (N, L)
    weights = xp.exp(scores - scores.max(axis=1, keepdims=True))
    weights /= weights.sum(axis=1, keepdims=True)
    by_hand = (weights[:, :, None] * features).sum(axis=1)
    ctx.check(rel_error(alpha, weights) < 1e-12 and rel_error(context, by_hand) < 1e-12, "same numbers")
    ctx.attention_args = (features, h, W_feat, W_hidden, b, w)
    return {"alpha (each row sums to 1)": backend.to_numpy(alpha).round(3),
            "row sums": backend.to_numpy(alpha.sum(axis=1)), "context": context.shape}


def step_2_attention_gradients(ctx):
    """Its backward pass, checked numerically.

    Everything is differentiable: the gradient reaches the features (and so
    the CNN), the hidden state (and so earlier steps), and the attention
    weights themselves. `dalpha` is the gradient of a loss that uses alpha
    directly, as the regulariser below does. (The forward here is the
    library's, `nn.attention.attention_forward`: its cache is what
    `attention_backward` reads.)
    """
    features, h, W_feat, W_hidden, b, w = ctx.attention_args
    gen = ctx.rng(1)
    dcontext, dalpha = gen.standard_normal((2, 3)), gen.standard_normal((2, 4))
    _, _, cache = nn.attention.attention_forward(*ctx.attention_args)
    grads = dict(zip(["features", "h", "W_feat", "W_hidden", "b", "w"], attention_backward(dcontext, dalpha, cache)))
    args = dict(zip(["features", "h", "W_feat", "W_hidden", "b", "w"], ctx.attention_args))
    errors = {}
    for name in grads:
        def outputs(value, name=name):   # both outputs in one array, so one check covers dcontext and dalpha
            context, alpha, _ = nn.attention.attention_forward(*[value if k == name else v
                                                                 for k, v in args.items()])
            return backend.xp().concatenate([context, alpha], axis=1)
        upstream = backend.xp().concatenate([dcontext, dalpha], axis=1)
        numeric = eval_numerical_gradient_array(outputs, args[name], upstream)
        errors[f"relative error d{name}"] = rel_error(grads[name], numeric)
    ctx.check(max(errors.values()) < 1e-7, f"attention gradients must match: {errors}")
    return errors


def step_3_data_and_model(ctx):
    """The model: a small CNN's 8 x 8 grid of features, attended at every word.

    Each grid location also carries its (row, column), so that the decoder
    can say WHERE the thing it looks at is ("at the top left"): convolutions
    alone see what, not where.

    Show, Attend and Tell, as in `captioning.models.ShowAttendTell`:
        h_0, c_0 from the mean feature;  for each word t:
        alpha_t = attention(grid, h_(t-1));  z_t = sum_l alpha_tl a_l
        beta_t = sigmoid(h_(t-1) W_beta + b_beta)   a gate: how much to rely on the image now
        h_t = LSTM([embedding of word_(t-1); beta_t z_t], h_(t-1))
    and the loss adds the "doubly stochastic" term lambda sum_l (1 - sum_t alpha_tl)^2,
    which pushes each location's total attention over the caption towards 1.
    The totals add up to T (one unit per word), and a caption has fewer words
    than the grid has cells, so in effect it spreads attention over the whole
    picture instead of letting the model stare at one spot.
    """
    sizes = (300, 2) if ctx.quick else (1000, 3)                        # training images, epochs
    splits = shapes_splits(n_train=sizes[0], n_val=100, n_test=100, seed=0, image_size=IMAGE_SIZE)
    ctx.test = splits["test"]
    ctx.data = splits                   # each split: images (inputs of the CNN) and their captions
    ctx.vocab = Vocabulary.build(splits["train"].all_tokens(), min_count=1)
    ctx.encoder = TrainableEncoder.small_cnn(channels=(16, 32), image_size=IMAGE_SIZE, seed=0)
    config = {"model": "attention", "vocab_size": len(ctx.vocab), "feature_dim": ctx.encoder.feature_dim("grid"),
              "wordvec_dim": 64, "hidden_dim": 128, "attention_dim": 64, "dropout": 0.0, "doubly_stochastic": 0.05,
              "null_id": ctx.vocab.null_id, "start_id": ctx.vocab.start_id, "end_id": ctx.vocab.end_id}
    ctx.model = build(config, seed=0)
    ctx.train_config = TrainConfig(epochs=sizes[1], batch_size=32, lr=2e-3, val_images=100, log_every=10.0)
    grid = ctx.encoder.eval().encode(splits["test"].images[:2], "grid", numpy.float32)   # eval: no batchnorm update
    return {"training images": sizes[0], "epochs": sizes[1], "image": splits["test"].images.shape[1:],
            "feature grid per image (L, D)": grid.shape[1:], "decoder parameters": ctx.model.num_params()}


def step_4_train(ctx):
    """Train CNN and decoder together, captioning the dev images after each epoch.

    The project's Trainer (teacher forcing, Adam, clipping); the CNN gets
    its gradients through the attention and the mean feature. This is the
    same run as lesson 1 (same data, sizes and seeds, so the same numbers);
    this time we look inside it.
    """
    trainer = Trainer(ctx.model, ctx.vocab, ctx.encoder, ctx.data["train"], ctx.data["dev"],
                      ctx.train_config, ctx.out_dir / "lesson11_run")
    history = ctx.fit(trainer)  # trainer.fit(), but Ctrl-C ends the lesson (see run_lesson.py)
    return {"dev BLEU-4 x100 per epoch": [round(100 * r["dev_bleu"][3], 1) for r in history]}


def step_5_caption_new_images(ctx):
    """Caption 100 test images it has never seen.

    For scale, a blind baseline gives every image the most common training
    caption. BLEU is printed x100 (lesson 12), as the papers print it.
    """
    captions, ctx.decoded = generate_captions(ctx.model, ctx.encoder, ctx.data["test"], ctx.vocab)
    ctx.captions = captions
    scores = bleu(ctx.data["test"].references, captions)
    counts = {}
    for refs in ctx.data["train"].references:
        for tokens in refs:
            counts[" ".join(tokens)] = counts.get(" ".join(tokens), 0) + 1
    blind = max(counts, key=counts.get)
    blind_scores = bleu(ctx.data["test"].references, [blind] * len(captions))
    ctx.check(scores[3] > blind_scores[3], "the model beats the blind baseline")
    for i in range(3):
        print(f"test image {i}: model: {' '.join(captions[i])}\n              human: {ctx.test.captions[i][0]}")
    return {"BLEU-1..4 x100": numpy.round(100 * numpy.array(scores), 1),
            f"blind baseline ({blind!r})": numpy.round(100 * numpy.array(blind_scores), 1)}


def attention_on_named_objects(captions, attention, objects):
    """For each generated colour/shape word that fits exactly ONE object: (image, word, on, chance).

    on = attention mass on the grid cells the object's box covers; chance =
    the share of the grid those cells are (what uniform attention gives).
    """
    grid_side = int(round(attention[0].shape[1] ** 0.5))
    cell = IMAGE_SIZE / grid_side
    found = []
    for i, words in enumerate(captions):
        for t, word in enumerate(words):
            named = [o for o in objects[i] if word in (o.color, o.shape)]
            if len(named) != 1:
                continue
            x0, y0, x1, y1 = named[0].box
            mask = numpy.zeros((grid_side, grid_side), dtype=bool)
            mask[int(y0 // cell):int(y1 // cell) + 1, int(x0 // cell):int(x1 // cell) + 1] = True
            found.append((i, word, float(attention[i][t].reshape(grid_side, grid_side)[mask].sum()), mask.mean()))
    return found


def step_6_does_it_look_at_the_right_thing(ctx):
    """Measured: attention on the object a word names, versus chance.

    For each generated colour or shape word that fits exactly ONE object of
    the image, take the attention mass on the grid cells that object covers,
    and compare it with the share of cells it covers (what uniform attention
    would give). A ratio well above 1 means that on average the model looks
    where it speaks; single words can still look elsewhere (next step).
    The measure is `attention_on_named_objects`, printed below.
    """
    ctx.show_source(attention_on_named_objects)
    ctx.measured = attention_on_named_objects(ctx.captions, ctx.decoded.attention, ctx.test.objects)
    ratios = {}
    for kind, words in (("colour words", COLORS), ("shape words", SHAPES)):
        rows = [(on, chance) for _, word, on, chance in ctx.measured if word in words]
        ratios[kind] = (len(rows), numpy.mean([r[0] for r in rows]) / numpy.mean([r[1] for r in rows])
                        if rows else float("nan"))
    on_all = numpy.mean([m[2] for m in ctx.measured]) / numpy.mean([m[3] for m in ctx.measured])
    ctx.check(len(ctx.measured) > 0 and on_all > 1, "attention is on the named object more than chance")
    return {"words measured": len(ctx.measured),
            **{f"{kind}: attention on the object / chance": f"{ratio:.2f} ({n} words)"
               for kind, (n, ratio) in ratios.items()},
            "all of them": round(float(on_all), 2),
            "words with attention on their object below chance": sum(on < chance for _, _, on, chance in ctx.measured)}


def step_7_where_it_looks(ctx):
    """Where it looks: one PNG per image, one tile per generated word.

    Each tile lights up the locations the model attended to when it chose that
    word (weights scaled so the strongest is white, upsampled from the 8 x 8
    grid). The images shown are chosen by the measure of step 6, so that
    they are honest samples: the test image where attention was LEAST on the
    named objects, a typical one (the median) and the best one.
    """
    per_image = {}
    for i, _, on, chance in ctx.measured:
        per_image.setdefault(i, []).append(on / chance)
    ranked = sorted(per_image, key=lambda i: numpy.mean(per_image[i]))
    shown = {"worst": ranked[0], "median": ranked[len(ranked) // 2], "best": ranked[-1]}
    results = {}
    for label, i in shown.items():
        path = ctx.output_path(f"lesson11_attention_{label}.png")
        save_attention_png(ctx.test.images[i], ctx.captions[i], ctx.decoded.attention[i], path, min_tile=128)
        results[f"{label}: test image {i}, on its objects / chance"] = round(float(numpy.mean(per_image[i])), 2)
        results[f"{label}: caption"] = " ".join(ctx.captions[i])
        results[f"{label}: picture"] = str(path)
    return results


def grade_attention_forward(ctx, mine, reference):
    """Your context and alpha against the library's, on random inputs (N=3, L=5, D=4, H=6, A=7)."""
    gen = ctx.rng(20)
    args = [gen.standard_normal(shape) for shape in [(3, 5, 4), (3, 6), (4, 7), (6, 7), (7,), (7,)]]
    yours, wanted = mine.attention_forward(*args)[:2], reference(*args)[:2]
    errors = {name: rel_error(y, w) for name, y, w in zip(["context", "alpha"], yours, wanted)}
    ctx.check(max(errors.values()) < 1e-10, f"context, alpha differ from the reference: relative errors {errors}")
    return f"context and alpha match the reference (largest relative error {max(errors.values()):.1e})"


if __name__ == "__main__":  # python lessons/lesson_11_attention.py [--no-pause] [--quick]
    import pathlib
    import sys
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
    import run_lesson
    sys.exit(run_lesson.main([__file__] + sys.argv[1:]))
