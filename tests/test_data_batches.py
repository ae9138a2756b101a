import numpy
import pytest

from captioning.data.batches import encode_split, iterate_images, iterate_minibatches
from captioning.data.splits import CaptionSplit
from captioning.data.text import Vocabulary, tokenize
from nn import backend


def small_split():
    captions = [["a dog runs", "a big dog runs fast"], ["a cat"], ["the dog and the cat sleep", "a zebra"]]
    return CaptionSplit(name="train", image_ids=["x.jpg", "y.jpg", "z.jpg"], image_paths=None,
                        captions=captions, tokens=[[tokenize(c) for c in cs] for cs in captions])


@pytest.fixture
def vocab():
    return Vocabulary.build(small_split().all_tokens(), min_count=2)  # a, dog, cat, runs, the


def test_encode_split_pads_with_null_and_records_the_image(vocab):
    table = encode_split(small_split(), vocab)
    assert table.max_length == 6 and table.captions.shape == (5, 8)
    assert table.image_index.tolist() == [0, 0, 1, 2, 2]
    a, dog, runs = vocab.word_to_id["a"], vocab.word_to_id["dog"], vocab.word_to_id["runs"]
    assert table.captions[0].tolist() == [1, a, dog, runs, 2, 0, 0, 0]
    assert table.captions[4].tolist() == [1, a, 3, 2, 0, 0, 0, 0]  # zebra -> <UNK>
    short = encode_split(small_split(), vocab, max_length=2)
    assert short.captions.shape == (5, 4)
    assert short.captions[3].tolist() == [1, vocab.word_to_id["the"], dog, 2]


def test_minibatches_cover_every_caption_once_in_a_seeded_order(vocab, xp):
    table = encode_split(small_split(), vocab)
    batches = list(iterate_minibatches(table, batch_size=2, seed=5, epoch=0))
    assert [len(b.image_index) for b in batches] == [2, 2, 1]
    rows = numpy.concatenate([backend.to_numpy(b.captions) for b in batches])
    assert sorted(map(tuple, rows)) == sorted(map(tuple, table.captions))
    assert backend.get_array_module(batches[0].captions, batches[0].mask) is xp
    again = list(iterate_minibatches(table, batch_size=2, seed=5, epoch=0))
    assert all(numpy.array_equal(a.image_index, b.image_index) for a, b in zip(batches, again))
    orders = {tuple(numpy.concatenate([b.image_index for b in iterate_minibatches(table, 1, seed=5, epoch=e)]))
              for e in range(6)}
    assert len(orders) > 1  # each epoch reshuffles
    assert len(list(iterate_minibatches(table, 2, drop_last=True))) == 2


def test_mask_is_aligned_with_targets_and_excludes_null(vocab):
    table = encode_split(small_split(), vocab)
    batch = next(iterate_minibatches(table, batch_size=5, shuffle=False))
    assert batch.inputs.shape == batch.targets.shape == batch.mask.shape == (5, 7)
    assert batch.mask.dtype == bool
    assert batch.mask.sum(axis=1).tolist() == [4, 6, 3, 7, 3]  # words + <END>
    assert numpy.array_equal(batch.mask, batch.targets != 0)
    assert (batch.inputs[:, 0] == vocab.start_id).all()


def test_resuming_at_a_batch_gives_the_remaining_batches(vocab):
    table = encode_split(small_split(), vocab)
    full = list(iterate_minibatches(table, batch_size=2, seed=1, epoch=3))
    resumed = list(iterate_minibatches(table, batch_size=2, seed=1, epoch=3, start_batch=1))
    assert len(resumed) == 2
    assert all(numpy.array_equal(a.captions, b.captions) for a, b in zip(full[1:], resumed))


def test_trim_drops_unused_padding_columns(vocab):
    table = encode_split(small_split(), vocab)
    batch = next(iterate_minibatches(table, batch_size=1, shuffle=False, trim=True))
    assert batch.captions.tolist() == [table.captions[0, :5].tolist()]


def test_features_are_gathered_per_pair_and_cast(vocab, xp):
    table = encode_split(small_split(), vocab)
    features = numpy.arange(3 * 4, dtype=numpy.float16).reshape(3, 4)
    batch = next(iterate_minibatches(table, batch_size=5, shuffle=False, features=features))
    assert batch.features.dtype == numpy.float32 and backend.get_array_module(batch.features) is xp
    numpy.testing.assert_array_equal(backend.to_numpy(batch.features), features[[0, 0, 1, 2, 2]])
    pixels = numpy.zeros((3, 3, 2, 2), dtype=numpy.uint8)
    batch = next(iterate_minibatches(table, 2, features=pixels))
    assert batch.features.dtype == numpy.uint8


def test_features_from_a_memmap(vocab, tmp_path):
    table = encode_split(small_split(), vocab)
    cache = numpy.lib.format.open_memmap(tmp_path / "f.npy", mode="w+", dtype=numpy.float16, shape=(3, 2))
    cache[:] = [[1, 2], [3, 4], [5, 6]]
    batch = next(iterate_minibatches(table, 5, seed=0, features=cache, feature_dtype=numpy.float64))
    numpy.testing.assert_array_equal(batch.features, numpy.asarray(cache, dtype=numpy.float64)[batch.image_index])


def test_iterate_images_gives_every_image_once_with_all_raw_references(vocab):
    split = small_split()
    batches = list(iterate_images(split, batch_size=2, features=numpy.eye(3)))
    assert [b.image_index.tolist() for b in batches] == [[0, 1], [2]]
    assert batches[1].image_ids == ["z.jpg"]
    assert batches[1].references == [[["the", "dog", "and", "the", "cat", "sleep"], ["a", "zebra"]]]
    numpy.testing.assert_array_equal(batches[1].features, [[0, 0, 1]])


def test_bad_batch_size_is_refused(vocab):
    table = encode_split(small_split(), vocab)
    with pytest.raises(ValueError, match="batch_size"):
        next(iterate_minibatches(table, 0))
    with pytest.raises(ValueError, match="batch_size"):
        next(iterate_images(small_split(), 0))
