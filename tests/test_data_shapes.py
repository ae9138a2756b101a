import numpy
import pytest

from captioning.data.shapes import COLORS, SHAPES, SIZES, make_shapes_dataset, shapes_splits
from captioning.data.text import Vocabulary, tokenize


@pytest.fixture(scope="module")
def shapes():
    return make_shapes_dataset(300, seed=7)


def test_same_seed_same_data_other_seed_other_data(shapes):
    again = make_shapes_dataset(300, seed=7)
    assert numpy.array_equal(again.images, shapes.images)
    assert again.captions == shapes.captions and again.objects == shapes.objects
    other = make_shapes_dataset(300, seed=8)
    assert not numpy.array_equal(other.images, shapes.images)


def test_images_are_uint8_nchw_with_one_to_three_objects(shapes):
    assert shapes.images.shape == (300, 3, 64, 64) and shapes.images.dtype == numpy.uint8
    counts = [len(o) for o in shapes.objects]
    assert set(counts) == {1, 2, 3}
    assert len(shapes) == 300 and shapes.image_paths is None
    assert make_shapes_dataset(2, seed=0, image_size=96).images.shape == (2, 3, 96, 96)


def test_each_box_holds_its_objects_colour_and_objects_do_not_overlap(shapes):
    for image, objects in zip(shapes.images, shapes.objects):
        painted = numpy.zeros(image.shape[1:], dtype=int)
        for obj in objects:
            x0, y0, x1, y1 = obj.box
            assert 0 <= x0 < x1 < 64 and 0 <= y0 < y1 < 64
            patch = image[:, y0:y1 + 1, x0:x1 + 1].reshape(3, -1).T
            is_colour = (patch == COLORS[obj.color]).all(axis=1)
            assert is_colour.mean() > 0.4  # the box is mostly this shape's colour
            painted[y0:y1 + 1, x0:x1 + 1] += 1
            # The box lies in the object's grid cell.
            cell = 64 / 3
            assert obj.col * cell <= x0 and x1 < (obj.col + 1) * cell
            assert obj.row * cell <= y0 and y1 < (obj.row + 1) * cell
        assert painted.max() <= 1
        colour_pixels = (image != numpy.array([28, 28, 28])[:, None, None]).any(axis=0).sum()
        assert colour_pixels == sum(
            (image[:, o.box[1]:o.box[3] + 1, o.box[0]:o.box[2] + 1].T != (28, 28, 28)).any(axis=-1).sum()
            for o in objects)  # nothing is drawn outside the boxes


def test_shapes_have_their_outline_and_size(shapes):
    fill = {}
    for image, objects in zip(shapes.images, shapes.objects):
        for obj in objects:
            x0, y0, x1, y1 = obj.box
            area = (x1 - x0 + 1) * (y1 - y0 + 1)
            filled = (image[:, y0:y1 + 1, x0:x1 + 1] == numpy.array(COLORS[obj.color])[:, None, None]).all(axis=0)
            fill.setdefault(obj.shape, []).append(filled.sum() / area)
            fill.setdefault(obj.size, []).append(x1 - x0 + 1)
    assert numpy.mean(fill["square"]) > 0.95          # squares fill their box
    assert 0.7 < numpy.mean(fill["circle"]) < 0.85     # pi / 4
    assert 0.4 < numpy.mean(fill["triangle"]) < 0.6   # one half
    assert min(fill["large"]) > max(fill["small"])


def test_caption_words_name_the_objects_they_refer_to(shapes):
    for objects, captions, tokens, refs in zip(shapes.objects, shapes.captions, shapes.tokens,
                                                shapes.word_objects):
        assert len(captions) == 5
        assert captions[0] != captions[1]
        for caption, words, word_refs in zip(captions, tokens, refs):
            assert tokenize(caption) == words and len(words) == len(word_refs)
            assert 3 <= len(words) <= 14
            for word, ref in zip(words, word_refs):
                if word in COLORS:
                    assert objects[ref].color == word
                elif word in SHAPES:
                    assert objects[ref].shape == word
                elif word in SIZES:
                    assert objects[ref].size == word
            assert sorted(set(word_refs) - {-1}) == list(range(len(objects)))  # every object named


def test_captions_follow_reading_order_and_relations(shapes):
    for objects, captions in zip(shapes.objects, shapes.captions):
        first = f"a {objects[0].size} {objects[0].color} {objects[0].shape}"
        assert captions[0].startswith(first)
        if len(objects) == 2:
            a, b = objects
            relation = "above" if a.col == b.col else "to the left of"
            assert a.col < b.col or (a.col == b.col and a.row < b.row)
            assert captions[0] == f"{first} {relation} a {b.size} {b.color} {b.shape}"
        if len(objects) == 1:
            position = {(0, 0): "at the top left", (1, 1): "in the center", (2, 1): "at the bottom"}
            if (objects[0].row, objects[0].col) in position:
                assert captions[0].endswith(position[(objects[0].row, objects[0].col)])


def test_vocabulary_is_small_and_splits_are_distinct():
    splits = shapes_splits(200, 50, 50, seed=1, captions_per_image=2)
    vocab = Vocabulary.build(splits["train"].all_tokens(), min_count=1)
    assert len(vocab) <= 4 + 26
    assert [len(splits[n]) for n in ("train", "dev", "test")] == [200, 50, 50]
    assert {len(c) for c in splits["dev"].captions} == {2}
    assert not numpy.array_equal(splits["dev"].images, splits["test"].images)
    assert splits["dev"].image_ids[0] == "shapes-dev-000000"


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="image_size"):
        make_shapes_dataset(1, image_size=8)
    with pytest.raises(ValueError, match="captions_per_image"):
        make_shapes_dataset(1, captions_per_image=6)


def test_subset_keeps_every_per_image_field(shapes):
    part = shapes.subset([5, 2])
    assert type(part) is type(shapes) and len(part) == 2
    assert part.captions == [shapes.captions[5], shapes.captions[2]]
    assert part.objects == [shapes.objects[5], shapes.objects[2]]
    assert part.word_objects[1] == shapes.word_objects[2]
    assert numpy.array_equal(part.images, shapes.images[[5, 2]])
    assert part.image_ids == [shapes.image_ids[5], shapes.image_ids[2]] and part.image_paths is None


def test_the_dataset_registry_rebuilds_shapes_from_a_spec_and_reads_folders_through_a_cache(tmp_path):
    from captioning.data.datasets import DATASETS, DatasetError, dataset_from_spec
    from data_fixtures import make_original, tiny_corpus
    data = DATASETS["shapes"].load(n_train=10, n_dev=3, n_test=2, seed=4)
    assert [len(data.splits[n]) for n in ("train", "dev", "test")] == [10, 3, 2]
    assert numpy.array_equal(data.splits["dev"].inputs, shapes_splits(10, 3, 2, seed=4)["dev"].images)
    again = dataset_from_spec(data.spec, splits=("dev",))
    assert numpy.array_equal(again.splits["dev"].inputs, data.splits["dev"].inputs)
    assert data.encoder_spec["name"] == "small_cnn" and data.encoder_spec["config"]["seed"] == 4
    make_original(tmp_path / "flickr", *tiny_corpus())
    with pytest.raises(DatasetError, match="no feature cache at"):
        dataset_from_spec(data.spec, data_arg=str(tmp_path / "flickr"), features_arg=str(tmp_path / "none"))
    with pytest.raises(DatasetError, match="give --data DIR"):
        dataset_from_spec({})
