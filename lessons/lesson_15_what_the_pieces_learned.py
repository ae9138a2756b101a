"""Lesson 15: what the pieces learned - image features, word vectors, and what the scores miss.

A captioner is trained end to end on one number, the caption loss. This
lesson opens three of its pieces and asks what they hold:

  - the image features: nearest neighbours in feature space, for raw
    pixels, a CNN with random weights and the same CNN trained (on the
    synthetic shapes: we know what is in every picture);
  - the word vectors: vectors from counting which words appear next to
    which (PPMI and a truncated SVD, the idea behind word2vec and GloVe),
    and the word vectors the shipped Flickr8k captioner learned;
  - the scores we judge captions by: cases made by hand where BLEU and
    CIDEr-D (lesson 12) reward the wrong caption.
"""
import math
from collections import Counter

import numpy
from PIL import Image, ImageDraw

from captioning.checkpoint import load_checkpoint
from captioning.data import load_flickr8k, make_shapes_dataset
from captioning.data.images import normalize_images
from captioning.data.shapes import COLORS, SHAPES
from captioning.encoders.small_cnn import SmallCNN
from captioning.metrics import bleu, cider_d_per_image, closest_reference_length
from captioning.pretrained import CAPTIONER, shipped_path
from nn import backend
from nn.layers import Affine
from nn.losses import softmax_loss
from nn.optim import Adam

TITLE = "What the pieces learned: CNN features random vs trained, word vectors from co-occurrence, what BLEU misses"
SECONDS = 10
QUICK_SECONDS = 8

IMAGE_SIZE = 32
COLOUR_WORDS = {"red", "blue", "green", "yellow", "white", "black", "brown", "orange", "pink", "purple", "gray",
                "grey", "silver", "tan"}
NUMBER_WORDS = {"two", "three", "four", "five", "six", "several", "2", "many", "few"}


def one_object_pictures(n, seed):
    """The shapes pictures (32 x 32) among n drawn that hold exactly one object: its shape, colour,
    size and cell are then the picture's."""
    split = make_shapes_dataset(n, seed=seed, image_size=IMAGE_SIZE, captions_per_image=1)
    return split.subset([i for i, objects in enumerate(split.objects) if len(objects) == 1])


def attributes(split):
    """{"shape", "colour", "size", "cell"}: (N,) int arrays, what is in each one-object picture."""
    objects = [o[0] for o in split.objects]
    return {"shape": numpy.array([SHAPES.index(o.shape) for o in objects]),
            "colour": numpy.array([list(COLORS).index(o.color) for o in objects]),
            "size": numpy.array([o.size == "large" for o in objects], dtype=int),
            "cell": numpy.array([3 * o.row + o.col for o in objects])}


def nearest_neighbours(features):
    """(N,) index of each row's nearest OTHER row by cosine similarity (features: (N, D), any backend)."""
    f = backend.to_numpy(features).astype(numpy.float64)
    f /= numpy.linalg.norm(f, axis=1, keepdims=True) + 1e-12
    similarity = f @ f.T
    numpy.fill_diagonal(similarity, -numpy.inf)
    return similarity.argmax(axis=1)


def nearest(features, i, k):
    """The k rows nearest to row i (cosine similarity), nearest first."""
    f = backend.to_numpy(features).astype(numpy.float64)
    f /= numpy.linalg.norm(f, axis=1, keepdims=True) + 1e-12
    similarity = f @ f[i]
    similarity[i] = -numpy.inf
    return numpy.argsort(-similarity)[:k]


def agreement(features, truth):
    """For each attribute: the share of pictures whose nearest neighbour has the same value."""
    neighbour = nearest_neighbours(features)
    return {name: round(float((values[neighbour] == values).mean()), 3) for name, values in truth.items()}


def step_1_pixels_and_a_random_cnn(ctx):
    """Image features before any training: raw pixels, and a CNN with random weights.

    One-object shapes pictures, so each picture has one shape (3 kinds),
    colour (4), size (2) and cell of the 3 x 3 grid (9). A feature is good
    for an attribute when pictures that are close in feature space share
    it: for every test picture we find its nearest neighbour (cosine
    similarity) and count how often the two agree (chance: about 1/3 for
    shape, 1/4 colour, 1/2 size, 1/9 cell).

    The CNN is the small one of lessons 1 and 11 (two stages of 3x3 conv,
    batchnorm, ReLU, 2x2 max pool), its features the mean over the 8 x 8
    grid (`pooled`), its weights random. Random convolutions, ReLU and
    pooling already keep colour, "how much stuff" (size) and something of
    the outline (shape well above chance); the mean over the grid keeps
    little of where things are.
    """
    ctx.train, ctx.test = one_object_pictures(3000, seed=1), one_object_pictures(600, seed=2)
    ctx.truth = attributes(ctx.test)
    ctx.train_x = normalize_images(ctx.train.images, mean=(0.5,) * 3, std=(0.5,) * 3)
    ctx.test_x = normalize_images(ctx.test.images, mean=(0.5,) * 3, std=(0.5,) * 3)
    ctx.cnn = SmallCNN(channels=(16, 32), image_size=IMAGE_SIZE, seed=0).eval()
    ctx.features = {"pixels": ctx.test_x.reshape(len(ctx.test), -1), "random CNN": ctx.cnn.forward(ctx.test_x)[1]}
    ctx.agreement = {name: agreement(f, ctx.truth) for name, f in ctx.features.items()}
    pixels, random = ctx.agreement["pixels"], ctx.agreement["random CNN"]
    ctx.check(pixels["cell"] > 0.9 and random["cell"] < pixels["cell"] - 0.3, "pixels keep the place, pooling loses it")
    ctx.check(random["colour"] > 0.9 and random["shape"] > 0.5, "random CNN features: colour, and shape above chance")
    return {"training pictures, test pictures": (len(ctx.train), len(ctx.test)),
            "feature sizes (pixels, random CNN)": (ctx.features["pixels"].shape[1],
                                                   ctx.features["random CNN"].shape[1]),
            **{f"nearest neighbour agrees, {name}": values for name, values in ctx.agreement.items()}}


def step_2_train_the_cnn(ctx):
    """Train the same CNN for one job: say which shape the picture holds.

    A linear layer on the pooled features gives 3 shape scores; the softmax
    loss (lesson 4) is backpropagated through the linear layer and into
    every conv and batchnorm of the CNN (`SmallCNN.backward`), Adam steps
    both. The CNN is never told about colours, sizes or places.
    """
    head = Affine(32, len(SHAPES), seed=0)
    cnn_optimizer, head_optimizer = Adam(ctx.cnn, lr=3e-3), Adam(head, lr=3e-3)
    labels, order_gen, losses = backend.asarray(attributes(ctx.train)["shape"]), numpy.random.default_rng(0), []
    epochs = 2 if ctx.quick else 3
    for epoch in range(epochs):
        ctx.cnn.train()
        order = order_gen.permutation(len(ctx.train))
        for start in range(0, len(ctx.train), 50):
            batch = backend.asarray(order[start:start + 50])
            _, pooled = ctx.cnn.forward(ctx.train_x[batch])
            loss, dscores = softmax_loss(head.forward(pooled), labels[batch])
            ctx.cnn.backward(None, head.backward(dscores))
            cnn_optimizer.step()
            head_optimizer.step()
            losses.append(loss)
    ctx.cnn.eval()                                     # batchnorm: running statistics (lesson 14)
    ctx.features["trained CNN"] = ctx.cnn.forward(ctx.test_x)[1]
    ctx.agreement["trained CNN"] = agreement(ctx.features["trained CNN"], ctx.truth)
    ctx.check(numpy.mean(losses[-10:]) < numpy.mean(losses[:10]), "the shape loss falls")
    ctx.check(ctx.agreement["trained CNN"]["shape"] > ctx.agreement["random CNN"]["shape"] + 0.05,
              "training for shape makes neighbours share their shape more often")
    return {"epochs": epochs, "shape loss, first and last 10 steps":
            (round(float(numpy.mean(losses[:10])), 3), round(float(numpy.mean(losses[-10:])), 3)),
            **{f"nearest neighbour agrees, {name}": values for name, values in ctx.agreement.items()}}


def step_3_neighbours_as_a_picture(ctx):
    """The neighbours, seen: four test pictures and their three nearest ones by each kind of feature.

    Rows: a test picture (left), then its 3 nearest neighbours by
    raw pixels, by the random CNN and by the trained CNN. Pixel neighbours
    sit in the same place, whatever their shape; the CNNs' neighbours share
    the colour wherever they are, and the trained CNN's more often the shape.
    """
    tile, gap, panel = 64, 16, 3 * 64 + 4                # 3 tiles and 2-pixel white lines per panel
    queries = [int(i) for i in numpy.flatnonzero(ctx.truth["size"] == 1)[:4]]   # large shapes: easy to see
    sheet = Image.new("RGB", (tile + gap + 3 * (panel + gap), len(queries) * (tile + 4) + 18), "white")
    draw = ImageDraw.Draw(sheet)
    def picture(i):
        return Image.fromarray(ctx.test.images[i].transpose(1, 2, 0)).resize((tile, tile), Image.NEAREST)
    draw.text((0, 2), "picture", fill=(0, 0, 0))
    for k, name in enumerate(ctx.features):
        draw.text((tile + gap + k * (panel + gap), 2), f"nearest by {name}", fill=(0, 0, 0))
    for row, i in enumerate(queries):
        y = 18 + row * (tile + 4)
        sheet.paste(picture(i), (0, y))
        for k, features in enumerate(ctx.features.values()):
            for m, j in enumerate(nearest(features, i, 3)):
                sheet.paste(picture(int(j)), (tile + gap + k * (panel + gap) + m * (tile + 2), y))
    path = ctx.output_path("lesson15_neighbours.png")
    sheet.save(path)
    return {"picture": str(path), "test pictures shown": queries,
            "their shapes": [SHAPES[ctx.truth["shape"][i]] for i in queries]}


def caption_tokens(ctx):
    """(token lists of training captions, where they came from): Flickr8k's when found, else the shapes'."""
    if ctx.data is not None and ctx.data.is_dir():
        try:
            return load_flickr8k(ctx.data).splits["train"].all_tokens(), "Flickr8k training captions"
        except FileNotFoundError as exc:
            print(f"{ctx.data} is not usable as Flickr8k ({exc}); using the synthetic shapes' captions.")
    return make_shapes_dataset(2000, seed=3).all_tokens(), "synthetic shapes captions (no Flickr8k found)"


def cooccurrence_counts(token_lists, words, window=2):
    """(V, V) counts: how often word j appears within `window` words of word i, over all captions."""
    index = {w: i for i, w in enumerate(words)}
    rows, cols = [], []
    for tokens in token_lists:
        ids = [index.get(w, -1) for w in tokens]
        for i, a in enumerate(ids):
            for j in range(max(0, i - window), min(len(ids), i + window + 1)):
                if j != i and a >= 0 and ids[j] >= 0:
                    rows.append(a)
                    cols.append(ids[j])
    counts = numpy.zeros((len(words), len(words)))
    numpy.add.at(counts, (numpy.array(rows, dtype=int), numpy.array(cols, dtype=int)), 1)
    return counts


def ppmi(counts):
    """Positive pointwise mutual information: max(0, log p(i, j) / (p(i) p(j))).

    PMI says how much more often two words meet than if they were
    independent. The context counts are raised to 0.75 (as word2vec's
    negative sampling does), which keeps rare context words from getting
    huge PMI; negative PMI (met less than chance) is unreliable and cut to 0.
    """
    total = counts.sum()
    word = counts.sum(axis=1, keepdims=True) / total
    context = counts.sum(axis=0, keepdims=True) ** 0.75
    context /= context.sum()
    with numpy.errstate(divide="ignore"):
        return numpy.maximum(numpy.log(counts / total / (word * context)), 0)


def nearest_words(vectors, words, word, k=5):
    """The k words whose vectors have the largest cosine similarity with `word`'s."""
    unit = vectors / (numpy.linalg.norm(vectors, axis=1, keepdims=True) + 1e-12)
    similarity = unit @ unit[words.index(word)]
    return [words[i] for i in numpy.argsort(-similarity) if words[i] != word][:k]


def step_4_word_vectors_from_counting(ctx):
    """Word vectors from counting: co-occurrence, PPMI, then a truncated SVD.

    "You shall know a word by the company it keeps" (Firth 1957). Count,
    over the training captions, how often each of the V most frequent
    words appears within 2 words of each other (`cooccurrence_counts`), turn
    counts into PPMI (`ppmi`, printed below), and keep the top k singular
    directions: PPMI ~ U S V^T, word vectors U_k sqrt(S_k). Words used in
    the same places get similar rows. Levy & Goldberg (2014) showed that
    word2vec's skip-gram with negative sampling factorises a shifted PMI
    matrix like this one; GloVe (Pennington et al. 2014) fits log counts.
    Such vectors can initialise a captioner's word embedding instead of
    random numbers (Vinyals et al. 2015 tried vectors learned from a news
    corpus and report no significant gain).
    """
    ctx.show_source(ppmi)
    tokens, ctx.word_source = caption_tokens(ctx)
    counts = Counter(w for t in tokens for w in t)
    ctx.words = [w for w, _ in counts.most_common(1000)]
    rank = min(50, len(ctx.words) // 3)
    u, s, _ = numpy.linalg.svd(ppmi(cooccurrence_counts(tokens, ctx.words)))
    ctx.word_vectors = u[:, :rank] * numpy.sqrt(s[:rank])
    flickr = "dog" in ctx.words
    probes = ["dog", "man", "red", "running", "two", "water", "ball"] if flickr else ["red", "circle", "small", "left"]
    groups = ({"red": COLOUR_WORDS, "two": NUMBER_WORDS} if flickr
              else {"red": set(COLORS), "circle": set(SHAPES), "small": {"large"}})
    neighbours = {w: nearest_words(ctx.word_vectors, ctx.words, w) for w in probes}
    for word, group in groups.items():                # the nearest words are of the same kind (up to 3)
        need = min(3, len(group - {word}))
        ctx.check(all(n in group for n in neighbours[word][:need]),
                  f"the {need} nearest words of {word!r} are of its kind: {neighbours[word]}")
    return {"captions": f"{len(tokens)} ({ctx.word_source})", "words (V)": len(ctx.words), "vector size k": rank,
            **{f"nearest to {w!r}": ", ".join(n) for w, n in neighbours.items()}}


def step_5_what_the_captioner_learned(ctx):
    """The word vectors the shipped Flickr8k captioner learned, and how they relate to the counted ones.

    `captioning/pretrained/captioner_flickr8k.npz` is a Show, Attend and
    Tell model trained on Flickr8k; its W_embed (one 256-number row per
    word) started random and was trained only to caption well: first to
    make the human captions likely, then to raise the CIDEr-D of its own.
    Its nearest words, and (with Flickr8k's captions found) how many of
    each word's 10 nearest words it shares with the counted vectors of
    step 4, against the share random neighbours would have (10 of the
    other words).
    """
    path = shipped_path(CAPTIONER)
    if path is None:
        ctx.stop("this install has no shipped captioner (captioning/pretrained/captioner_flickr8k.npz)")
    checkpoint = load_checkpoint(path)
    vocabulary, embedding = checkpoint.vocabulary, backend.to_numpy(checkpoint.model.params["W_embed"])
    words = vocabulary.id_to_word[4:]                  # the specials (<NULL>, <START>, ...) left out
    learned = embedding[4:].astype(numpy.float64)
    probes = [w for w in ["dog", "man", "red", "running", "two", "water", "ball"] if w in vocabulary]
    results = {"captioner's words": len(words), "word vector size": learned.shape[1],
               **{f"nearest to {w!r}": ", ".join(nearest_words(learned, words, w)) for w in probes}}
    colours = [n for n in nearest_words(learned, words, "red") if n in COLOUR_WORDS]
    ctx.check(len(colours) >= 3, "the captioner's nearest words to 'red' are colours")
    if "dog" not in ctx.words:
        print("Flickr8k's captions were not found: the comparison with counted vectors needs them (--data DIR).")
        return results
    common = [w for w in ctx.words if w in vocabulary]
    counted = ctx.word_vectors[[ctx.words.index(w) for w in common]]
    learned_common = learned[[words.index(w) for w in common]]
    def top10(vectors):
        unit = vectors / (numpy.linalg.norm(vectors, axis=1, keepdims=True) + 1e-12)
        similarity = unit @ unit.T
        numpy.fill_diagonal(similarity, -numpy.inf)
        return numpy.argsort(-similarity, axis=1)[:, :10]
    shared = float(numpy.mean([len(set(a) & set(b)) / 10 for a, b in zip(top10(counted), top10(learned_common))]))
    chance = 10 / (len(common) - 1)
    ctx.check(shared > 5 * chance, "learned and counted neighbourhoods overlap far beyond chance")
    return {**results, "words in both": len(common), "share of 10 nearest words in common": round(shared, 3),
            "the same for random neighbours": round(chance, 4)}


PHOTO = [   # five human captions of a (made-up) photo, and four other photos for CIDEr-D's document counts
    ["a black dog chases a white cat across the grass", "a black dog is running after a white cat",
     "a dog chases a cat on a lawn", "a black dog runs after a small white cat on the grass",
     "a dark dog chasing a white cat outside"],
    ["a man rides a bike down the street", "a cyclist on a city street", "a man is riding a bicycle on the road",
     "a person on a bike in traffic", "a man in a helmet rides his bike"],
    ["two children play in the water", "kids splash in a pool", "two kids are playing in the water",
     "children swimming in a pool", "two young children splash in the water"],
    ["a woman holds an umbrella in the rain", "a woman with a red umbrella", "a lady walking in the rain",
     "a woman stands in the rain with an umbrella", "a person holding an umbrella on a wet street"],
    ["a brown dog catches a frisbee on the grass", "a dog jumps for a frisbee", "a dog leaps to catch a frisbee",
     "a brown dog playing frisbee in a field", "a dog catching a frisbee in the park"],
]


def scores_for_photo_0(hypothesis):
    """BLEU-1, BLEU-4 and CIDEr-D (all x100) of one caption of photo 0 (the others get one of their own)."""
    hypotheses = [hypothesis] + [refs[0] for refs in PHOTO[1:]]
    b = bleu([PHOTO[0]], [hypothesis])
    return {"BLEU-1": round(100 * b[0], 1), "BLEU-4": round(100 * b[3], 1),
            "CIDEr-D": round(100 * float(cider_d_per_image(PHOTO, hypotheses)[0]), 1)}


def step_6_right_meaning_wrong_words(ctx):
    """What BLEU and CIDEr-D miss: a correct paraphrase scores low, a wrong caption with the right words high.

    Both metrics count shared n-grams, so they reward the right WORDS, not
    the right meaning. The photo: a black dog chasing a white cat (five
    human captions). A correct caption in other words ("puppy", "pursues",
    "kitten") shares few n-grams; swapping who chases whom, or the two
    colours, keeps almost every n-gram and says something false.
    """
    cases = {"right, in the references' words": "a black dog chases a white cat on the grass",
             "right, in other words": "a dark puppy pursues a pale kitten over the lawn",
             "wrong: who chases whom swapped": "a white cat is running after a black dog",
             "wrong: the colours swapped": "a white dog chases a black cat across the grass"}
    scores = {name: scores_for_photo_0(caption) for name, caption in cases.items()}
    paraphrase = scores["right, in other words"]
    for wrong in ("wrong: who chases whom swapped", "wrong: the colours swapped"):
        ctx.check(all(scores[wrong][m] > paraphrase[m] for m in paraphrase), f"{wrong} beats the paraphrase")
    ctx.check(scores["wrong: the colours swapped"]["BLEU-1"] == 100, "every word of the false caption is right")
    return {f"{name}: {cases[name]!r}": s for name, s in scores.items()}


def step_7_length(ctx):
    """Length: short captions and corpus BLEU's brevity penalty.

    BLEU's precisions reward saying little: "a black dog" has every word
    right. The brevity penalty BP = exp(1 - r / c) stops that (c = 3 words,
    r = 8, the closest reference length), but corpus BLEU
    (what papers report, lesson 12) computes it over the whole test set:
    the total length of all captions against the total reference length.
    A model whose short captions on some photos are balanced by long ones
    on others pays no penalty at all. CIDEr-D scores each caption on its
    own (its n-grams, and a Gaussian penalty on the difference in length),
    so the short caption scores far below the right one.
    """
    short, long_ = "a black dog", "a man rides a bike down the street in a helmet on a sunny day in the city"
    alone = bleu([PHOTO[0]], [short])
    fair = bleu(PHOTO[:2], ["a black dog chases a white cat on the grass", "a man rides a bike down the street"])
    hidden = bleu(PHOTO[:2], [short, long_])
    closest = [closest_reference_length([len(r.split()) for r in refs], len(h.split()))
               for refs, h in zip(PHOTO[:2], [short, long_])]
    bp = min(1.0, math.exp(1 - sum(closest) / (len(short.split()) + len(long_.split()))))
    cider_short = float(cider_d_per_image(PHOTO, [short] + [r[0] for r in PHOTO[1:]])[0])
    cider_right = float(cider_d_per_image(PHOTO, ["a black dog chases a white cat on the grass"]
                                          + [r[0] for r in PHOTO[1:]])[0])
    ctx.check(abs(alone[0] - math.exp(1 - 8 / 3)) < 1e-12, "'a black dog' alone: BLEU-1 = 1 (every word right) "
                                                            "times BP = exp(1 - 8/3)")
    ctx.check(bp == 1.0 and hidden[0] > 0.6, "in the corpus the long caption hides the short one's length")
    ctx.check(cider_short < cider_right / 2, "CIDEr-D scores the short caption far lower")
    return {"'a black dog' alone: BLEU-1 x100 (= 100 x its BP)": round(100 * alone[0], 1),
            "corpus of 2, step 6's right caption + a reference of photo 1: BLEU-1..4 x100": numpy.round(100 * numpy.array(fair), 1),
            f"corpus of 2, 'a black dog' + a {len(long_.split())}-word caption: BLEU-1..4 x100": numpy.round(100 * numpy.array(hidden), 1),
            "its brevity penalty (total lengths)": bp,
            "CIDEr-D x100 of 'a black dog' vs the right caption": (round(100 * cider_short, 1),
                                                                   round(100 * cider_right, 1))}


if __name__ == "__main__":  # python lessons/lesson_15_what_the_pieces_learned.py [--no-pause] [--quick] [--data DIR]
    import pathlib
    import sys
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
    import run_lesson
    sys.exit(run_lesson.main([__file__] + sys.argv[1:]))
