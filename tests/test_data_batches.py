"""The one batching module: caption tables, the seeded (length-bucketed) batches of an epoch, the split type."""
import numpy
import pytest

from captioning.data.batches import encode_captions, epoch_batches, num_batches, take_batch
from captioning.data.datasets import ShapesDataset
from captioning.data.splits import CaptionSplit
from captioning.data.text import Vocabulary, tokenize


def small_split():
    captions = [["a dog runs", "a big dog runs fast"], ["a cat"], ["the dog and the cat sleep", "a zebra"]]
    return CaptionSplit(name="train", image_ids=["x.jpg", "y.jpg", "z.jpg"], image_paths=None,
                        captions=captions, tokens=[[tokenize(c) for c in cs] for cs in captions])


@pytest.fixture
def vocab():
    return Vocabulary.build(small_split().all_tokens(), min_count=2)  # a, dog, cat, runs, the


def test_encode_captions_pads_cuts_and_maps_unknown_words():
    vocab = Vocabulary(["a", "dog"])
    split = CaptionSplit("train", ["x.jpg"], None, [["a dog", "a zebra dog a"]],
                         [[["a", "dog"], ["a", "zebra", "dog", "a"]]])
    table = encode_captions(split, vocab, max_words=3)
    numpy.testing.assert_array_equal(table.image_index, [0, 0])
    numpy.testing.assert_array_equal(table.captions, [[1, 4, 5, 2, 0], [1, 4, 3, 5, 2]])
    numpy.testing.assert_array_equal(table.lengths(), [4, 5])


def test_batches_cover_every_caption_once_in_an_order_fixed_by_seed_and_epoch(vocab):
    table = encode_captions(small_split(), vocab, max_words=6)
    batches = epoch_batches(table, batch_size=2, seed=5, epoch=0)
    assert [len(b) for b in batches] == [2, 2, 1] and num_batches(len(table), 2) == 3
    assert sorted(numpy.concatenate(batches).tolist()) == list(range(5))
    again = epoch_batches(table, batch_size=2, seed=5, epoch=0)
    assert all(numpy.array_equal(a, b) for a, b in zip(batches, again))
    orders = {tuple(numpy.concatenate(epoch_batches(table, 1, seed=5, epoch=e))) for e in range(6)}
    assert len(orders) > 1
    with pytest.raises(ValueError, match="batch_size"):
        epoch_batches(table, 0, seed=0, epoch=0)


def test_take_batch_trims_the_padding_no_caption_of_the_batch_uses(vocab):
    table = encode_captions(small_split(), vocab, max_words=6)
    short = int(numpy.argmin(table.lengths()))
    images, captions = take_batch(table, numpy.array([short]))
    assert captions.shape == (1, table.lengths()[short]) and images.tolist() == [table.image_index[short]]
    images, captions = take_batch(table, numpy.arange(5))
    assert captions.shape == (5, table.lengths().max())


def test_length_buckets_give_batches_of_similar_length_covering_every_caption():
    data = ShapesDataset.load(n_train=200, n_dev=2, n_test=2, seed=0)
    vocab = Vocabulary.build(data.train_tokens(), min_count=1)
    table = encode_captions(data.splits["train"], vocab, max_words=20)
    batches = epoch_batches(table, batch_size=16, seed=3, epoch=0, length_buckets=20)
    assert len(batches) == num_batches(1000, 16, length_buckets=20) == 63   # 3 windows of 20 + 3
    assert sorted(numpy.concatenate(batches).tolist()) == list(range(1000))
    lengths = table.lengths()
    spread = numpy.mean([numpy.ptp(lengths[b]) for b in batches])
    assert spread < 0.5 * numpy.mean([numpy.ptp(lengths[b]) for b in numpy.array_split(numpy.arange(1000), 63)])
    plain = epoch_batches(table, batch_size=16, seed=3, epoch=0)
    assert len(plain) == 63 and len(plain[-1]) == 1000 - 62 * 16


def test_a_split_gives_its_inputs_and_references_and_keeps_them_aligned_when_cut():
    split = small_split()
    assert split.inputs is None and split.references is split.tokens
    pixels = numpy.arange(3 * 2).reshape(3, 2)
    with_pixels = split.with_features(pixels)
    assert with_pixels.inputs is pixels and split.features is None
    head = with_pixels.head(2)
    assert head.image_ids == ["x.jpg", "y.jpg"] and head.inputs.tolist() == [[0, 1], [2, 3]]
    assert head.references == split.tokens[:2] and with_pixels.head(None) is with_pixels


def test_cutting_a_two_image_shapes_split_keeps_its_seed():
    from captioning.data.shapes import make_shapes_dataset
    split = make_shapes_dataset(2, seed=[7, 1])
    assert split.head(1).seed == [7, 1] and split.head(1).image_ids == split.image_ids[:1]
