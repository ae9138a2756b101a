"""Lesson 16: aligning words and image regions (Karpathy & Fei-Fei 2015).

"Deep Visual-Semantic Alignments for Generating Image Descriptions" maps the
regions of an image and the words of a sentence into ONE h-dimensional space,
scores an image against a sentence by letting every word pick its best region,
and trains with a ranking loss: a true image-sentence pair must score higher
than the wrong pairs of the minibatch. Nobody tells the model which word goes
with which region; that comes out of the training. The same scores rank
images for a sentence (image search) and sentences for an image (image
annotation), measured by Recall@K and the median rank.

The library: captioning.alignment (model, retrieval, training, figure),
nn.bidirectional (the sentence RNN), nn.ranking (score and loss).
`python -m captioning align train` runs what steps 6-7 do, longer.
"""
import numpy
from PIL import Image

from captioning.alignment import app
from captioning.alignment.checkpoint import load_aligner
from captioning.alignment.data import encode_sentences
from captioning.alignment.figure import annotate_image
from captioning.alignment.model import AlignmentModel
from captioning.alignment.regions import shapes_word_alignment
from captioning.alignment.retrieval import ranks, recall_metrics
from captioning.alignment.training import AlignConfig, AlignTrainer, evaluate_retrieval
from nn import backend
from nn.gradcheck import eval_numerical_gradient_array, rel_error
from nn.ranking import fragment_score_forward, max_margin_ranking_backward, max_margin_ranking_forward

TITLE = "Aligning words and regions (Karpathy & Fei-Fei): fragments, the score, the ranking loss, recall@K"
SECONDS = 55
QUICK_SECONDS = 12

# `python run_lesson.py 16 --exercise`: write this yourself (graded by grade_ranking_loss and step 4)
EXERCISES = ["ranking_loss"]
EXERCISE_IMPORTS = ["from nn import backend"]

# A tiny model for steps 1-4: D-dimensional CNN features of L grid cells, V words, E-dimensional
# word vectors, h-dimensional multimodal space. float64 so that hand computations agree to 1e-12.
D, L, V, E, H = 6, 4, 10, 3, 5


def tiny_model(**options):
    return AlignmentModel({"feature_dim": D, "vocab_size": V, "embed_dim": E, "hidden_dim": H, **options},
                          seed=0, dtype=numpy.float64)


def relu(x):
    return backend.xp().maximum(x, 0)


def ranking_loss(S, margin=1.0):
    """The bidirectional max-margin ranking loss of a minibatch, and its gradient.

    S[k, l] is the score of image k with sentence l; the diagonal holds the N
    true pairs. Every wrong sentence l of image k costs max(0, S[k, l] - S[k, k]
    + margin) (a row), every wrong image l of sentence k costs max(0, S[l, k] -
    S[k, k] + margin) (a column); the loss is the total over k, divided by N.

    Inputs:
    - S: (N, N) float array
    - margin: float
    Returns: (loss, dS): loss a float, dS (N, N) its gradient with respect to S.
    """
    xp = backend.get_array_module(S)
    N = S.shape[0]
    true = xp.diagonal(S)
    wrong = 1 - xp.eye(N, dtype=S.dtype)                          # no cost for the true pair itself
    rows = xp.maximum(0, S - true[:, None] + margin) * wrong      # row k: sentences for image k
    cols = xp.maximum(0, S - true[None, :] + margin) * wrong      # column k: images for sentence k
    loss = float((rows.sum() + cols.sum()) / N)
    # Each active hinge adds +1 to its wrong pair's score and -1 to the true pair it measures against.
    active = (rows > 0).astype(S.dtype) + (cols > 0).astype(S.dtype)
    dS = active - xp.diag((rows > 0).sum(axis=1) + (cols > 0).sum(axis=0)).astype(S.dtype)
    return loss, dS / N


def step_1_image_fragments(ctx):
    """Image fragments: every grid cell, and the whole image, becomes a vector v_i in the shared space.

    The paper embeds the 19 best object detections of an R-CNN plus the whole
    image. We have no detector: our "regions" are the L cells of the CNN's
    feature grid (7 x 7 for EfficientNet-Lite0 on photos, 8 x 8 for the small
    CNN of the shapes set) plus the whole image (the mean of the grid), each
    mapped by one affine layer: v_i = W_m f_i + b_m. Here: 2 images of L = 4
    cells with D = 6 features each, h = 5.
    """
    model = tiny_model()
    grid = ctx.rng(0).standard_normal((2, L, D))                  # (N, L, D) CNN features
    v, _ = model.regions_forward(grid)                            # (N, L + 1, h)
    W_m, b_m = model.params["W_m"], model.params["b_m"]
    xp = backend.xp()
    by_hand = xp.concatenate([grid @ W_m + b_m, (grid.mean(axis=1) @ W_m + b_m)[:, None]], axis=1)
    ctx.check(v.shape == (2, L + 1, H) and rel_error(v, by_hand) < 1e-12, "v = W_m f + b_m for cells and image")
    ctx.model, ctx.grid = model, grid
    return {"CNN grid (N, L, D)": grid.shape, "fragments v (N, L + 1, h)": v.shape,
            "last fragment = the whole image": "yes (the mean of the cells, mapped the same way)",
            "largest difference from the hand computation": float(abs(v - by_hand).max())}


def step_2_sentence_fragments(ctx):
    """Sentence fragments: a bidirectional RNN gives every word a vector s_t that knows its context.

    x_t = W_w[word_t], e_t = ReLU(x_t W_e + b_e); one ReLU RNN reads left to
    right, one right to left: hf_t = ReLU(e_t + hf_{t-1} W_f + b_f), hb_t =
    ReLU(e_t + hb_{t+1} W_b + b_b); then s_t = ReLU((hf_t + hb_t) W_d + b_d).
    "red" in "a red circle" and in "a red square" get different vectors.
    Sentences are padded to one length with a mask; the right-to-left RNN of a
    short sentence must start at its LAST REAL word, so padding changes nothing
    (checked: the same sentence alone and padded in a batch).
    """
    words = backend.asarray(numpy.array([[4, 7, 2, 9], [5, 3, 0, 0]]))           # ids, 0 = padding
    mask = backend.asarray(numpy.array([[1, 1, 1, 1], [1, 1, 0, 0]]), dtype=numpy.float64)
    s, _ = ctx.model.words_forward(words, mask)                                 # (M, T, h)
    p, xp = ctx.model.params, backend.xp()
    e = relu(p["W_w"][words[1, :2]] @ p["W_e"] + p["b_e"])                      # the second sentence: its 2 real words
    hf, hb, h = {}, {}, xp.zeros(H)
    for t in (0, 1):                                                            # left to right
        hf[t] = h = relu(e[t] + h @ p["W_f"] + p["b_f"])
    h = xp.zeros(H)
    for t in (1, 0):                                                            # right to left, from the last real word
        hb[t] = h = relu(e[t] + h @ p["W_b"] + p["b_b"])
    by_hand = xp.stack([relu((hf[t] + hb[t]) @ p["W_d"] + p["b_d"]) for t in range(2)])
    alone, _ = ctx.model.words_forward(words[1:, :2], mask[1:, :2])
    ctx.check(rel_error(s[1, :2], by_hand) < 1e-12, "the BRNN by hand = words_forward")
    ctx.check(rel_error(alone[0], s[1, :2]) < 1e-12, "padding changes nothing")
    ctx.words, ctx.mask = words, mask
    return {"word vectors s (M, T, h)": s.shape, "sentence 2 by hand = library (relative error)":
            float(rel_error(s[1, :2], by_hand)), "sentence 2 alone = padded (relative error)":
            float(rel_error(alone[0], s[1, :2]))}


def step_3_the_score(ctx):
    """The score: each word picks its best region, S_kl = sum_t max_i v_i . s_t.

    This is the paper's simplified image-sentence score. A word that fits a
    region of image k well adds a lot; nothing says WHICH region a word
    should pick, the max decides. The project scores with cosines instead
    (unit vectors, times 10), and on Flickr8k with their mean over the words:
    S_kl = 10 x mean_t max_i cos(v_i, s_t). Why: with raw dot products the
    Flickr8k model overfit within a few epochs, and on the shapes set words
    picked a NEIGHBOURING cell with a large vector norm instead of the cell of
    their shape; a cosine cannot win by a large norm. The mean keeps long
    sentences from outscoring short ones by their length alone (below: a
    sentence said twice scores twice as much with the sum). Nothing stops two
    words from picking the SAME region, though: "a red circle and a red
    circle" fits an image of one red circle perfectly. The score cannot count.
    That is why the project adds a GLOBAL term (`--global-weight g`, not in
    the paper): one whole-image vector u (from the pooled features) against
    one whole-sentence vector q (the two ends of the BRNN, which have read
    every word), S_kl + g u_k . q_l. Step 6 trains with it.
    """
    xp = backend.xp()
    v, _ = ctx.model.regions_forward(ctx.grid)
    s, _ = ctx.model.words_forward(ctx.words, ctx.mask)
    S, _ = fragment_score_forward(v, s, ctx.mask)                            # (N images, M sentences)
    loops = numpy.zeros(S.shape)
    for k in range(v.shape[0]):
        for l in range(s.shape[0]):
            for t in range(int(ctx.mask[l].sum())):
                loops[k, l] += max(float(v[k, i] @ s[l, t]) for i in range(v.shape[1]))
    ctx.check(rel_error(S, backend.asarray(loops)) < 1e-12, "S by loops = fragment_score_forward")
    # The same sentence twice ("a b c d a b c d"): the sum doubles, the mean stays.
    twice = xp.concatenate([ctx.words[:1], ctx.words[:1]], axis=1)
    ones = xp.ones(twice.shape)
    cosine = tiny_model(cosine=10.0, average=True)
    scores = {}
    for name, model in [("sum of dot products", ctx.model), ("10 x mean of cosines", cosine)]:
        v_m = model.regions_forward(ctx.grid)[0]
        once = fragment_score_forward(v_m, model.words_forward(ctx.words[:1], ones[:, :4])[0], ones[:, :4],
                                      **model.score_options())[0]
        doubled = fragment_score_forward(v_m, model.words_forward(twice, ones)[0], ones, **model.score_options())[0]
        scores[name] = float((doubled / once)[0, 0])
    unit_v = cosine.regions_forward(ctx.grid)[0] / numpy.sqrt(10)
    ctx.check(abs(scores["10 x mean of cosines"] - 1) < 0.2 < abs(scores["sum of dot products"] - 1),
              "saying a sentence twice changes the sum far more than the mean")
    ctx.check(float(abs((unit_v * unit_v).sum(axis=-1) - 1).max()) < 1e-9, "cosine fragments are unit vectors x sqrt(10)")
    return {"S (2 images x 2 sentences), paper's score": numpy.round(backend.to_numpy(S), 3),
            "loops = library (relative error)": float(rel_error(S, backend.asarray(loops))),
            "score of a sentence said twice / said once": scores}


def step_4_the_ranking_loss(ctx):
    """The max-margin ranking loss, both directions, against a loop over every wrong pair.

    In a minibatch of N true pairs (image k, sentence k) every other sentence
    is a wrong description of image k, every other image a wrong match for
    sentence k. Each costs max(0, S_wrong - S_true + 1): zero once the true
    pair wins by the margin 1. `ranking_loss` (top of this file; `--exercise`
    lets you write it) does it with whole arrays; the loops say the same
    thing one pair at a time; nn.ranking's version is what the model trains
    with (it also skips pairs whose captions are word for word the same:
    "a red circle" of another image is not wrong).
    """
    S = ctx.rng(4).standard_normal((5, 5)) * 2                   # scores of 5 images x 5 sentences
    N = S.shape[0]
    brute = 0.0
    for k in range(N):
        for l in range(N):
            if l != k:
                brute += max(0.0, float(S[k, l] - S[k, k]) + 1)  # wrong sentence l for image k
                brute += max(0.0, float(S[l, k] - S[k, k]) + 1)  # wrong image l for sentence k
    brute /= N
    loss, dS = ranking_loss(S, 1.0)
    library, cache = max_margin_ranking_forward(S, 1.0)
    numeric = eval_numerical_gradient_array(lambda x: backend.asarray(ranking_loss(x, 1.0)[0]), S,
                                            backend.asarray(1.0))
    ctx.check(abs(loss - brute) < 1e-12 and abs(library - brute) < 1e-12, "loss = brute force = nn.ranking")
    ctx.check(rel_error(dS, numeric) < 1e-7, "dS = finite differences")
    ctx.check(rel_error(dS, max_margin_ranking_backward(cache)) < 1e-12, "dS = nn.ranking's backward")
    return {"brute force": brute, "ranking_loss": loss, "nn.ranking": library,
            "dS against finite differences (relative error)": float(rel_error(dS, numeric)),
            "true pairs ahead of every wrong one by 2: loss": ranking_loss(2 * backend.xp().eye(N), 1.0)[0]}


def step_5_recall_at_k(ctx):
    """Recall@K and the median rank, on a hand case: 3 images, 2 sentences each.

    Image annotation: rank all sentences for an image; the image's rank is
    the best rank of its OWN sentences. Image search: rank all images for a
    sentence; the rank of its own image. R@K = the percentage of queries
    ranked K or better; Med r = the median rank. A wrong item that merely
    TIES the true one does not count against it: the shapes set has the same
    caption ("a red circle") for many images, and the library scores each
    distinct sentence once so that such ties are exact.
    """
    S = backend.asarray(numpy.array([[5.0, 1.0, 2.0, 0.0, 3.0, 1.0],     # image 0: own sentences 0, 1
                                     [4.0, 0.5, 1.0, 3.0, 0.0, 2.0],     # image 1: own sentences 2, 3
                                     [0.0, 2.0, 1.0, 1.0, 2.0, 2.0]]))   # image 2: own sentences 4, 5
    owner = numpy.array([0, 0, 1, 1, 2, 2])
    annotation, search = ranks(backend.to_numpy(S), owner)
    # By hand. Image 0: sentence 0 (5.0) beats all -> 1. Image 1: its best, sentence 3 (3.0), is
    # beaten by the wrong 4.0 only -> 2. Image 2: its best 2.0 (sentences 4, 5) ties the wrong
    # sentence 1 (2.0): a tie does not count -> 1.
    # Search, per column: sentence 0 -> image 0 first (1); sentence 1 (1, 0.5, 2) -> 2;
    # sentence 2 (2, 1, 1) -> 2; sentence 3 (0, 3, 1) -> 1; sentence 4 (3, 0, 2) -> 2;
    # sentence 5 (1, 2, 2): image 2 ties image 1 -> 1.
    ctx.check(annotation.tolist() == [1, 2, 1] and search.tolist() == [1, 2, 2, 1, 2, 1], "ranks as by hand")
    metrics = recall_metrics(backend.to_numpy(S), owner, ks=(1, 2))
    ctx.check(metrics["annotation"]["median_rank"] == 1 and metrics["search"]["R@1"] == 50.0, "R@K as by hand")
    return {"annotation ranks (per image)": annotation.tolist(), "search ranks (per sentence)": search.tolist(),
            "annotation": metrics["annotation"], "search": metrics["search"]}


def step_6_train_on_shapes(ctx):
    """Training on the shapes set: a small CNN and the aligner, end to end, for one epoch.

    The model at the size and with the settings of `align train` on shapes:
    h 128, the small CNN's 8 x 8 grid + the whole image as fragments, the sum
    over the words of 10 x the best cosine (on shapes the sum ranks images'
    own captions first more often than the mean), plus 3 x the cosine of the
    whole image and the whole sentence (step 3), a learned vector per cell
    added to its region vector (a convolution's features do not say WHERE a
    cell is, and captions say "at the top left"), Adam. Then the paper's
    protocol on unseen test images (Recall@K both ways), and the question
    the model was never asked: does "red" or "circle" pick a cell that lies
    on the red circle? (regions.shapes_word_alignment measures it; chance is
    the share of cells that lie on a shape's box.) One epoch here; `align
    train` runs eight, cutting the learning rate after each, and ranks far
    better (README, "On the synthetic shapes set").
    """
    n_images = 300 if ctx.quick else None                       # None: 3000 training images, 500 test
    o = app.DEFAULTS["shapes"]                                  # the settings of `align train`
    data, encoder = app.load_training_data(None, None, seed=0, max_images=n_images)
    ctx.vocab = app.vocabulary_from(data, min_count=1)
    model = app.build_model(data, encoder, ctx.vocab, o["hidden"], o["embed"],
                            **{k: o[k] for k in app.MODEL_OPTIONS})
    config = AlignConfig(epochs=1, batch_size=o["batch_size"], lr=o["lr"], lr_decay=o["lr_decay"], log_every=10.0)
    ctx.run_dir = ctx.out_dir / "lesson16_run"
    trainer = AlignTrainer(model, encoder, ctx.vocab, data, config, ctx.run_dir)
    progress = trainer.fit()            # Ctrl-C saves last.npz and ends the lesson (status 130)
    test = data.splits["test"]
    metrics = evaluate_retrieval(model.eval(), encoder, test, encode_sentences(test.references, ctx.vocab))
    where = shapes_word_alignment(model, encoder, test, ctx.vocab)
    # Chance: the share of the side x side cells that overlap a shape's pixel box, over all shapes.
    side = int(numpy.sqrt(encoder.encode(test.images[:1], "grid", model.dtype).shape[1]))
    cell = test.images.shape[-1] / side
    def cells_on(box):
        x0, y0, x1, y1 = box
        return (int(x1 // cell) - int(x0 // cell) + 1) * (int(y1 // cell) - int(y0 // cell) + 1)
    chance = float(numpy.mean([cells_on(obj.box) for objs in test.objects for obj in objs])) / side ** 2
    # Chance of annotation R@1: a random order puts one of an image's 5 sentences first with about 5 / P.
    ctx.check(metrics["annotation"]["R@1"] > 10 * 100 * 5 / (5 * len(test)), "annotation far above chance")
    ctx.check(where["on_shape"] > 2 * chance, "colour and shape words pick their shape's cells")
    ctx.test, ctx.test_metrics, ctx.on_shape = test, metrics, where["on_shape"]
    return {"trained": f"{progress.step} steps on {len(data.splits['train'])} images", "test images": len(test),
            "annotation (image -> sentences)": {k: round(v, 1) for k, v in metrics["annotation"].items()},
            "search (sentence -> images)": {k: round(v, 1) for k, v in metrics["search"].items()},
            "colour/shape words whose best cell is on their shape": f"{100 * where['on_shape']:.1f}% of {where['words']}",
            "a random cell on the shape (chance)": f"{100 * chance:.1f}%"}


def step_7_the_region_picture(ctx):
    """The region picture: each cell with the words that chose it, and each word's dot products.

    The paper's figure writes each region's words on the photo. `align
    annotate` draws it (captioning.alignment.figure); here for a test image
    with two or more shapes and its most detailed caption, from the best
    checkpoint the training wrote.
    """
    i = next(k for k, objs in enumerate(ctx.test.objects) if len(objs) >= 2)
    image_path = ctx.output_path("lesson16_shapes.png")
    Image.fromarray(ctx.test.images[i].transpose(1, 2, 0)).save(image_path)
    ckpt = load_aligner(ctx.run_dir / "best.npz")
    caption = ctx.test.captions[i][0]
    png = ctx.output_path("lesson16_regions.png")
    lines = annotate_image(ckpt, str(image_path), caption, str(png))
    ctx.check(png.read_bytes()[:4] == b"\x89PNG" and len(lines) == len(caption.split()), "one line per word")
    return {"caption": caption, "objects": [f"{o.color} {o.shape} box {o.box}" for o in ctx.test.objects[i]],
            "each word's best region": lines, "picture": str(png)}


def grade_ranking_loss(ctx, mine, reference):
    """Your loss and dS against nn.ranking on random scores of minibatches of 1 to 8 pairs, two margins."""
    worst = 0.0
    for n in range(1, 9):
        for margin in (1.0, 0.3):
            S = ctx.rng(100 + n).standard_normal((n, n))
            loss, dS = mine.ranking_loss(S, margin)
            wanted, cache = max_margin_ranking_forward(S, margin)
            ctx.check(abs(loss - wanted) < 1e-10, f"N={n}, margin {margin}: your loss {loss}, nn.ranking's {wanted}")
            error = rel_error(dS, max_margin_ranking_backward(cache)) if n > 1 else float(abs(dS).max())
            ctx.check(error < 1e-10, f"N={n}, margin {margin}: dS differs from nn.ranking's (relative error {error:.1e})")
            worst = max(worst, error)
    return f"loss and dS match nn.ranking for N = 1..8 (largest relative error {worst:.1e})"


if __name__ == "__main__":  # python lessons/lesson_16_alignment.py [--no-pause] [--quick]
    import pathlib
    import sys
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
    import run_lesson
    sys.exit(run_lesson.main([__file__] + sys.argv[1:]))
