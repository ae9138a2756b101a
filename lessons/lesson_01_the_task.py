"""Lesson 1: describing images with words.

Image captioning: given a picture, write a sentence that says what is in it.
Three levels of saying what an image shows:

  1. classify     - one label for the whole image ("dog"); ImageNet CNNs do this;
  2. describe     - one sentence for the whole image ("a dog runs on the grass");
                    Show and Tell (Vinyals et al. 2015) and Show, Attend and
                    Tell (Xu et al. 2015) do this, and so does this project;
  3. annotate     - a phrase for each region ("black dog", "green grass");
                    Karpathy & Fei-Fei ("Deep Visual-Semantic Alignments",
                    2015) generate both whole-image sentences and these.

The classic recipe, which every lesson of this course builds by hand: a CNN
turns the image into features, a recurrent language model (an LSTM) writes
the sentence one word at a time, looking at the features, and the two are
trained together to make the human captions likely. This lesson runs that
recipe end to end on the built-in synthetic "shapes" pictures in under a minute
and captions pictures it has never seen. The later lessons open every box.
"""
import numpy
from PIL import Image, ImageDraw

from captioning.data import Vocabulary, shapes_splits
from captioning.metrics import bleu
from captioning.models import build
from captioning.encoders import TrainableEncoder
from captioning.generation import generate_captions
from captioning.training import Trainer, TrainConfig

TITLE = "Describing images with words: the task, and a captioner trained in under a minute"
SECONDS = 50
QUICK_SECONDS = 12

IMAGE_SIZE = 32


def step_1_the_data(ctx):
    """The data: pictures with several human-style captions each.

    Real data sets (Flickr8k, lesson 13) have photos with five captions
    written by different people. Here a generator draws one to three
    coloured shapes and writes five captions from templates, so there is no
    download and we know the right answer exactly. Each split uses its own
    random seed: the test pictures are never seen in training.
    """
    sizes = (300, 2) if ctx.quick else (1000, 3)                       # training pictures, epochs
    ctx.epochs = sizes[1]
    splits = shapes_splits(n_train=sizes[0], n_val=100, n_test=100, seed=0, image_size=IMAGE_SIZE)
    ctx.splits = splits
    ctx.data = splits                   # each split: images (inputs of the CNN) and their captions
    ctx.vocab = Vocabulary.build(splits["train"].all_tokens(), min_count=1)
    return {"pictures (train, dev, test)": tuple(len(s) for s in splits.values()),
            "one picture": splits["train"].images[0].shape,
            "its captions": "\n".join(splits["train"].captions[0]),
            "words in the vocabulary": len(ctx.vocab)}


def step_2_the_model(ctx):
    """The model: a small CNN (the eyes) and an LSTM with attention (the writer).

    The CNN turns each 32 x 32 picture into an 8 x 8 grid of feature vectors.
    Before each word, the LSTM decides where on that grid to look (soft
    attention, Xu et al. 2015), then picks the next word. Both start random.
    """
    ctx.encoder = TrainableEncoder.small_cnn(channels=(16, 32), image_size=IMAGE_SIZE, seed=0)
    config = {"model": "attention", "vocab_size": len(ctx.vocab), "feature_dim": ctx.encoder.feature_dim("grid"),
              "wordvec_dim": 64, "hidden_dim": 128, "attention_dim": 64, "dropout": 0.0, "doubly_stochastic": 0.05,
              "null_id": ctx.vocab.null_id, "start_id": ctx.vocab.start_id, "end_id": ctx.vocab.end_id}
    ctx.model = build(config, seed=0)
    cnn_parameters = sum(int(p.size) for _, p, _ in ctx.encoder.named_parameters())
    return {"CNN parameters": cnn_parameters, "decoder parameters": ctx.model.num_params()}


def step_3_before_training(ctx):
    """Before training, the captions are word salad.

    Decoding picks the most probable word at every step (lesson 10); with
    random weights that is noise.
    """
    captions, _ = generate_captions(ctx.model, ctx.encoder, ctx.data["test"].head(3), ctx.vocab, max_length=12)
    return {f"test picture {i}": " ".join(c) for i, c in enumerate(captions)}


def step_4_train(ctx):
    """Training: make the human captions likely.

    For every (picture, caption) pair the model predicts each next word from
    the picture and the true words before it; the loss is the negative
    log-likelihood of the caption (lesson 4), and backpropagation (lesson 3)
    adjusts every weight of the decoder and the CNN a little (Adam). After
    each epoch the dev pictures are captioned and scored (BLEU-4, lesson 12;
    printed x100 as in papers: 50.9 means 0.509 of a perfect 1), and their
    loss is measured too (the dev loss): a training loss that keeps falling
    while the dev loss rises would be memorising, not learning.
    """
    train_config = TrainConfig(epochs=ctx.epochs, batch_size=32, lr=2e-3, val_images=100, log_every=10.0)
    trainer = Trainer(ctx.model, ctx.vocab, ctx.encoder, ctx.data["train"], ctx.data["dev"], train_config,
                      ctx.out_dir / "lesson01_run")
    history = ctx.fit(trainer)  # trainer.fit(), but Ctrl-C ends the lesson (see run_lesson.py)
    return {"train loss per epoch": [round(r["train_loss"], 3) for r in history],
            "dev loss per epoch": [round(r["dev_loss"], 3) for r in history],
            "dev BLEU-4 x100 per epoch": [round(100 * r["dev_bleu"][3], 1) for r in history]}


def step_5_caption_new_pictures(ctx):
    """Caption pictures it has never seen.

    The model's captions next to one of the human ones, and BLEU (lesson 12)
    over all 100 test pictures. A "blind" captioner that writes the most
    common training caption for every picture shows what BLEU gives for
    not looking at all. The PNG shows the first eight pictures with the
    model's captions.
    """
    test = ctx.data["test"]
    captions, _ = generate_captions(ctx.model, ctx.encoder, test, ctx.vocab)
    scores = bleu(test.references, captions)
    counts = {}
    for refs in ctx.data["train"].references:
        for tokens in refs:
            counts[" ".join(tokens)] = counts.get(" ".join(tokens), 0) + 1
    blind = max(counts, key=counts.get)
    blind_scores = bleu(test.references, [blind] * len(test))
    ctx.check(scores[0] > blind_scores[0] and scores[3] > blind_scores[3], "the model beats the blind captioner")

    tile = 128
    sheet = Image.new("RGB", (2 * (tile + 440), 4 * (tile + 8)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i in range(8):
        x, y = (i % 2) * (tile + 440), (i // 2) * (tile + 8)
        picture = Image.fromarray(ctx.splits["test"].images[i].transpose(1, 2, 0)).resize((tile, tile), Image.NEAREST)
        sheet.paste(picture, (x, y))
        draw.text((x + tile + 6, y + tile // 2 - 12), " ".join(captions[i]), fill=(0, 0, 0))
        draw.text((x + tile + 6, y + tile // 2 + 4), "human: " + ctx.splits["test"].captions[i][0], fill=(90, 90, 90))
    path = ctx.output_path("lesson01_captions.png")
    sheet.save(path)
    for i in range(5):
        print(f"picture {i}:  model: {' '.join(captions[i])}\n            human: {ctx.splits['test'].captions[i][0]}")
    return {"BLEU-1..4 x100": numpy.round(100 * numpy.array(scores), 1),
            f"blind captioner ({blind!r})": numpy.round(100 * numpy.array(blind_scores), 1),
            "picture": str(path)}


if __name__ == "__main__":  # python lessons/lesson_01_the_task.py [--no-pause] [--quick]
    import pathlib
    import sys
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
    import run_lesson
    sys.exit(run_lesson.main([__file__] + sys.argv[1:]))
