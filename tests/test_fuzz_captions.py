"""Fuzzing the three caption-file readers with mutated files (seeded, a few seconds).

Each layout's caption file (token file, Kaggle captions.txt, Karpathy JSON) is
mutated at random: truncated, bytes flipped, quotes / tabs / commas / line
breaks / bad UTF-8 inserted, lines repeated or swapped, JSON values replaced by
ones of the wrong type, files made huge. Every outcome must be one of:

- success with consistent counts: every caption the file holds is either read
  or counted as skipped, each read caption comes from one line (for the line
  layouts), has words, holds no line break or tab and is at most 500
  characters; every image of a split has >= 1 caption, and the report's
  counts match the splits;
- a CaptionFileError whose message is one short line.

Any other exception fails the test (the CLI would print a traceback), and so
does a hang (an alarm stops the test).
"""
import copy
import json
import signal
import time
from contextlib import contextmanager

import numpy
import pytest

import captioning.data.caption_files as caption_files
from captioning.data.flickr8k import CaptionFileError, load_flickr8k
from captioning.data.splits import LoadReport
from captioning.data.text import tokenize
from data_fixtures import SPLIT_FILES, tiny_corpus

CASES_PER_LAYOUT = 400
SECONDS_PER_LAYOUT = 60           # far above the ~1-2 s they take: only a hang reaches it
CAPTION_FILES = {"original": "Flickr8k_text/Flickr8k.token.txt", "kaggle": "captions.txt",
                 "karpathy": "dataset_flickr8k.json"}
INSERTS = [b'"', b'""', b"\t", b"\n", b"\r", b"\r\n", b",", b"#", b"#x", b"\x00", b"\xe9", b"\xff\xfe",
           b"\xef\xbb\xbf", "\u2028".encode(), b"\x0b", b"\x1b[2J", b"{", b"[", b"]", b"}", b"\\", b"\\u",
           b"\\ud800", b":", b"null", b"1e999"]
WRONG_VALUES = [None, 0, 7, -1.5, True, "", "a dog runs", [], {}, ["a", 3], {"tokens": "x"}, [["a"]],
                "x" * 2000, "a\nb\tc", "\u0000\u001b"]


@contextmanager
def alarm(seconds):
    """Fail instead of hanging when the body runs longer than `seconds` (Unix only)."""
    if not hasattr(signal, "SIGALRM"):
        yield
        return

    def stop(signum, frame):
        raise TimeoutError(f"fuzzing took over {seconds} s: a reader hangs")
    previous = signal.signal(signal.SIGALRM, stop)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def base_files(tmp_path):
    """(root, caption file path, its clean bytes) for each layout; photos are empty files."""
    splits, captions = tiny_corpus()
    captions[splits["train"][0]][2] = 'a dog "jumps" , high'
    roots = {}
    for layout, image_dir in (("original", "Flicker8k_Dataset"), ("kaggle", "Images"), ("karpathy", "Images")):
        root = tmp_path / layout
        (root / image_dir).mkdir(parents=True)
        for image_id in captions:
            (root / image_dir / image_id).write_bytes(b"")
        roots[layout] = root
    (roots["original"] / "Flickr8k_text").mkdir()
    for name, file_name in SPLIT_FILES.items():
        (roots["original"] / "Flickr8k_text" / file_name).write_text("\n".join(splits[name]) + "\n")
    token_lines = [f"{i}#{k}\t{c}" for i, cs in captions.items() for k, c in enumerate(cs)]
    kaggle_lines = ["image,caption"] + [f'{i},"{c}"' if "," in c else f"{i},{c}"
                                        for i, cs in captions.items() for c in cs]
    kaggle_lines = [line.replace('"jumps"', '""jumps""') for line in kaggle_lines]
    karpathy_split = {"train": "train", "dev": "val", "test": "test"}
    document = {"images": [{"filename": i, "split": karpathy_split[name],
                            "sentences": [{"tokens": tokenize(c), "raw": c} for c in captions[i]]}
                           for name, ids in splits.items() for i in ids]}
    clean = {"original": "\n".join(token_lines) + "\n", "kaggle": "\r\n".join(kaggle_lines) + "\r\n",
             "karpathy": json.dumps(document)}
    return {layout: (roots[layout], roots[layout] / CAPTION_FILES[layout], clean[layout].encode())
            for layout in clean}, document


def mutate_bytes(data, rng):
    """One random byte-level damage of `data`."""
    n = len(data)
    at, other = int(rng.integers(0, n + 1)), int(rng.integers(0, n + 1))
    lo, hi = min(at, other), max(at, other)
    kind = rng.integers(0, 8)
    if kind == 0:
        return data[:at]
    if kind == 1 and n:
        flipped = bytearray(data)
        for i in rng.integers(0, n, size=int(rng.integers(1, 9))):
            flipped[i] = int(rng.integers(0, 256))
        return bytes(flipped)
    if kind in (2, 3):
        return data[:at] + INSERTS[int(rng.integers(0, len(INSERTS)))] + data[at:]
    if kind == 4:
        return data[:lo] + data[hi:]
    if kind == 5:
        return data[:hi] + data[lo:hi] * int(rng.integers(1, 4)) + data[hi:]
    if kind == 6:
        lines = data.split(b"\n")
        i, j = rng.integers(0, len(lines), size=2)
        lines[i], lines[j] = lines[j], lines[i]
        return b"\n".join(lines)
    suffix = [b"\t x\t42", b'"', b" ,", b"\t", b'"a""b"c'][int(rng.integers(0, 5))]
    lines = data.split(b"\n")
    i = int(rng.integers(0, len(lines)))
    lines[i] = lines[i] + suffix
    return b"\n".join(lines)


def mutate_json(document, rng):
    """Karpathy's document with one value somewhere replaced by a wrong one (or deleted)."""
    document = copy.deepcopy(document)
    value = copy.deepcopy(WRONG_VALUES[int(rng.integers(0, len(WRONG_VALUES)))])
    level = rng.integers(0, 6)
    if level == 0:
        return value
    if level == 1:
        document["images"] = value
        return document
    entry = document["images"][int(rng.integers(0, len(document["images"])))]
    sentence = entry["sentences"][int(rng.integers(0, len(entry["sentences"])))]
    target, key = [(entry, "filename"), (entry, "split"), (entry, "sentences"), (sentence, "tokens"),
                   (sentence, "raw"), (sentence["tokens"], 0)][int(rng.integers(0, 6))]
    if level == 2 and isinstance(target, dict):
        del target[key]
    else:
        target[key] = value
    return document


def huge(data, rng):
    """A big file: the body repeated, or one line of a million characters."""
    if rng.random() < 0.5:
        return data * 300
    return data[:40] + b"a dog " * 200_000 + data[40:]


def whole_file_damage(data, rng):
    """Damage that spoils every line: no separator left, another encoding, only blank lines."""
    kind = rng.integers(0, 4)
    if kind == 0:
        return data.replace(b"\t", b" ").replace(b",", b";").replace(b":", b"=")
    if kind == 1:
        return data.decode("utf-8").encode("utf-16")
    if kind == 2:
        return b" \n\r\n\t\n" * int(rng.integers(0, 5))
    return data.replace(b"a", b"\xe9")


def mutated_inputs(layout, clean, document, rng, n):
    """`n` damaged versions of a layout's caption file."""
    for case in range(n):
        if case % 150 == 149:
            yield huge(clean, rng)
        elif case % 40 == 39:
            yield whole_file_damage(clean, rng)
        elif layout == "karpathy" and rng.random() < 0.5:
            data = json.dumps(mutate_json(document, rng)).encode()
            yield mutate_bytes(data, rng) if rng.random() < 0.2 else data
        elif layout == "karpathy" and rng.random() < 0.05:
            yield [b"[" * 100_000, b"1" * 5000, b'{"images": [' + b"0," * 50_000 + b"0]}"][int(rng.integers(0, 3))]
        else:
            data = clean
            for _ in range(int(rng.integers(1, 4))):
                data = mutate_bytes(data, rng)
            yield data


def records_in(layout, data):
    """How many caption records the file holds, counted here from its bytes (or its JSON)."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    if layout != "karpathy":
        return sum(1 for line in data.splitlines() if line.strip()) - (layout == "kaggle")
    document = json.loads(data.decode("utf-8"))
    return sum(len(entry["sentences"]) for entry in document["images"])


def one_caption_per_line(layout, data, captions):
    """Each caption read from a line file is found within a single line of it."""
    if layout == "karpathy":
        return
    # Captions hold no line break (checked first), so one found in the joined lines is within one.
    lines = "\n".join(" ".join(raw.decode("utf-8", "replace").split()) for raw in data.splitlines())
    lines = lines.replace('"', "")
    for texts in captions.values():
        for caption in texts:
            assert caption.replace('"', "") in lines, caption[:80]


def check_captions(layout, data, captions, report):
    assert sum(map(len, captions.values())) + report.num_skipped() == records_in(layout, data)
    for texts in captions.values():
        assert texts, "an image with an empty caption list"
        for caption in texts:
            assert tokenize(caption) and len(caption) <= caption_files.MAX_CAPTION_CHARS
            assert len(caption.splitlines()) == 1 and "\t" not in caption and caption.isprintable()
    one_caption_per_line(layout, data, captions)


def check_loaded(data):
    seen = set()
    for name, split in data.splits.items():
        assert len(split.image_ids) == len(split.image_paths) == len(split.captions) == len(split.tokens)
        assert not seen & set(split.image_ids)
        seen |= set(split.image_ids)
        for texts, tokens in zip(split.captions, split.tokens):
            assert texts and tokens == [tokenize(c) for c in texts]
        assert data.report.images[name] == len(split) and data.report.captions[name] == split.num_captions


def check_error(exc):
    message = str(exc)
    assert len(message.splitlines()) == 1 and len(message) < 500, message[:1000]


def read_captions(layout, path):
    """The layout's reader on its own: (image id -> captions, report)."""
    report = LoadReport(layout=layout)
    reader = {"original": caption_files.read_token_file, "kaggle": caption_files.read_kaggle_csv,
              "karpathy": lambda p, r: caption_files.read_karpathy_json(p, r)[0]}[layout]
    return reader(path, report), report


def run_case(layout, root, path, data):
    """'read' or 'refused', after checking the outcome; anything else propagates."""
    path.unlink(missing_ok=True)   # ext4 flushes a file truncated and rewritten in place: 20x slower
    path.write_bytes(data)
    try:
        captions, report = read_captions(layout, path)
    except CaptionFileError as exc:
        check_error(exc)
        with pytest.raises(CaptionFileError):
            load_flickr8k(root, layout=layout)
        return "refused"
    check_captions(layout, data, captions, report)
    check_loaded(load_flickr8k(root, layout=layout))
    return "read"


@pytest.mark.parametrize("layout", ["original", "kaggle", "karpathy"])
def test_mutated_caption_files_load_consistently_or_raise_caption_file_error(tmp_path, layout):
    files, document = base_files(tmp_path)
    root, path, clean = files[layout]
    assert run_case(layout, root, path, clean) == "read"
    rng = numpy.random.default_rng(["original", "kaggle", "karpathy"].index(layout))
    outcomes = {"read": 0, "refused": 0}
    start = time.perf_counter()
    with alarm(SECONDS_PER_LAYOUT):
        for i, data in enumerate(mutated_inputs(layout, clean, document, rng, CASES_PER_LAYOUT)):
            try:
                outcomes[run_case(layout, root, path, data)] += 1
            except Exception as exc:
                raise AssertionError(f"{layout} case {i}: {exc!r} on {data[:200]!r}") from exc
    assert sum(outcomes.values()) == CASES_PER_LAYOUT
    assert min(outcomes.values()) >= 10, outcomes       # both outcomes are exercised
    print(f"{layout}: {outcomes} in {time.perf_counter() - start:.2f} s")
