"""Encode every image once, keep the encoder outputs on disk: the feature cache.

Training a decoder on a frozen pretrained CNN only needs the CNN's outputs, so
we compute them once (`extract_features`, the `features` command) and read
them back as memory-mapped arrays (`open_cache`). A cache is three files next
to each other (never inside the data folder, which is read-only):

    <stem>.grid.npy    (N, L, D)  feature grid per image (L = 49 for 7x7), for attention
    <stem>.pooled.npy  (N, D)     its mean over the L locations, for Show and Tell
    <stem>.json        the index: image ids in row order, the encoder's name,
                       version and input settings (size, resize, mean, std),
                       shapes, dtype, how many rows are complete, and the
                       command that rebuilds the cache

Safety: the index is the truth. It is written atomically (a temporary file
in the same folder, then os.replace), and only AFTER a batch of rows has been
written and flushed, so a crash at any moment leaves a cache whose first
`complete` rows are valid; `extract_features` on the same arguments resumes
from there. Opening checks the index against the data you ask for (ids) and
the encoder you use, and refuses a mismatch with the command to rebuild.
A full disk is an error naming the file, never a crash: the free space is
checked before any file is made, and the arrays' space is reserved on disk
(posix_fallocate, captioning.disk) before rows are written through the memory map (a write
there into space the disk lacks would kill the process with SIGBUS).
"""
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

from nn import backend
from nn.persist import atomic_write, remove_stale_temporaries

from .disk import allocated_bytes, create_npy, reserve_disk
from .progress import ProgressBar

__all__ = ["FeatureCache", "FeatureCacheError", "open_cache", "extract_features", "cache_paths",
           "default_cache_path", "encoder_identity", "cache_size"]

FORMAT_VERSION = 1
COMMIT_SECONDS = 2.0  # how often the index's "complete" count is brought up to date


class FeatureCacheError(ValueError):
    """A cache that is missing, incomplete, corrupt, or made for other data or another encoder."""


def cache_paths(path):
    """The three files of the cache named `path` (with or without a .npy/.json suffix)."""
    path = Path(path)
    name = path.name
    for suffix in (".grid.npy", ".pooled.npy", ".npy", ".json"):
        if name.endswith(suffix):
            name = name[:-len(suffix)]
            break
    stem = path.with_name(name)
    return {"grid": stem.with_name(name + ".grid.npy"), "pooled": stem.with_name(name + ".pooled.npy"),
            "index": stem.with_name(name + ".json")}


def default_cache_path(dataset, encoder_name, split="all"):
    """./outputs/features/<dataset>_<encoder>[_<split>] (relative to the working directory)."""
    suffix = "" if split == "all" else f"_{split}"
    return Path("outputs") / "features" / f"{dataset}_{encoder_name}{suffix}"


def encoder_identity(encoder):
    """What a cache records about the encoder that made it (JSON-friendly)."""
    pre = encoder.preprocess
    return {"name": encoder.name, "version": str(encoder.version),
            "input": {"size": pre["size"], "resize": pre["resize"],
                      "mean": [float(v) for v in pre["mean"]], "std": [float(v) for v in pre["std"]]}}


def _write_json_atomic(path, data):
    """Write JSON to `path` atomically (nn.persist.atomic_write)."""
    with atomic_write(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1)


class _Rows:
    """`array[rows[i]]` for i in a split's order: what data.batches indexes."""

    def __init__(self, array, rows):
        self.array, self.rows = array, rows
        self.shape = (len(rows),) + tuple(array.shape[1:])
        self.dtype = array.dtype
        self.ndim = array.ndim

    def __len__(self):
        return len(self.rows)

    def pick(self, indices):
        """The rows at `indices` of this view, as a view (nothing is read: CaptionSplit.subset uses it)."""
        return _Rows(self.array, self.rows[np.asarray(indices, dtype=np.int64)])

    def __getitem__(self, index):
        rows = self.rows[index]
        if np.ndim(rows) == 0:
            return np.asarray(self.array[int(rows)])
        # reading a memmap in increasing row order is faster; put the rows back after
        order = np.argsort(rows, kind="stable")
        out = np.empty((len(rows),) + self.shape[1:], dtype=self.dtype)
        out[order] = self.array[rows[order]]
        return out


class FeatureCache:
    """An open cache: `grid` (N, L, D) and `pooled` (N, D) memmaps plus its `index` dict."""

    def __init__(self, path, index, grid, pooled):
        self.path, self.index, self.grid, self.pooled = path, index, grid, pooled
        self.image_ids = list(index["image_ids"])
        self._row_of = {image_id: row for row, image_id in enumerate(self.image_ids)}
        # rows already found finite, per kind: each row is read for the check at most once
        self._finite = {"grid": np.zeros(len(self.image_ids), bool),
                        "pooled": np.zeros(len(self.image_ids), bool)}

    def __len__(self):
        return len(self.image_ids)

    @property
    def complete(self):
        return int(self.index["complete"])

    def rows(self, image_ids):
        """Row numbers of the given ids (FeatureCacheError listing the ones not cached)."""
        missing = [i for i in image_ids if i not in self._row_of]
        if missing:
            made_by = self.index.get("rebuild", "python -m captioning features ...")
            raise FeatureCacheError(
                f"feature cache {self.path} lacks {len(missing)} of the {len(image_ids)} images asked for "
                f"(e.g. {missing[:3]}): it was made for other images by `{made_by}`. Make one for these "
                f"images (`python -m captioning features --data DIR` covers all three splits of DIR) "
                f"with another --out, or with this --out and --overwrite")
        return np.array([self._row_of[i] for i in image_ids], dtype=np.int64)

    def for_images(self, image_ids, check=("grid", "pooled")):
        """(grid, pooled) views ordered like `image_ids` (index them like arrays).

        check: the kinds whose rows are read once now to make sure they hold no
        NaN or inf (FeatureCacheError naming the image otherwise); pass the
        kind the model uses. A damaged row would otherwise become an empty
        caption, or a training that "diverges" for no fault of its settings.
        """
        rows = self.rows(image_ids)
        for kind in check:
            self.check_finite(rows, kind)
        return _Rows(self.grid, rows), _Rows(self.pooled, rows)

    def check_finite(self, rows, kind, chunk=256):
        """Raise FeatureCacheError naming the first image among `rows` whose `kind`
        ("grid" or "pooled") features hold NaN or inf. Reads each row at most once
        per cache (about 1 s for 6000 float16 7x7x1280 grids)."""
        array, done = getattr(self, kind), self._finite[kind]
        todo = np.unique(np.asarray(rows, dtype=np.int64))
        todo = todo[~done[todo]]
        for begin in range(0, len(todo), chunk):
            part = todo[begin:begin + chunk]
            values = np.asarray(array[part])
            finite = np.isfinite(values.reshape(len(part), -1)).all(axis=1)
            if not finite.all():
                bad = part[~finite]
                rebuild = self.index.get("rebuild", "python -m captioning features --data DIR")
                raise FeatureCacheError(
                    f"feature cache {self.path}: the {kind} features of image {self.image_ids[bad[0]]} "
                    f"(row {bad[0]}) hold NaN or inf" + (f", and {len(bad) - 1} more of the next "
                                                         f"{len(part)} rows" if len(bad) > 1 else "") +
                    f": the cache is damaged; rebuild it: {rebuild} --overwrite")
            done[part] = True


def _read_index(index_path):
    try:
        with open(index_path) as f:
            index = json.load(f)
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as exc:
        raise FeatureCacheError(f"feature cache index {index_path} is unreadable ({exc})") from exc
    needed = {"format", "encoder", "image_ids", "grid_shape", "pooled_shape", "dtype", "complete"}
    if not isinstance(index, dict) or not needed <= set(index):
        raise FeatureCacheError(f"feature cache index {index_path} is not a feature cache index "
                                f"(needs keys {sorted(needed)})")
    # The types the code below relies on (a hand-edited index would otherwise give a TypeError).
    types = {"encoder": dict, "image_ids": list, "grid_shape": list, "pooled_shape": list, "dtype": str,
             "complete": int, "skipped": list, "rebuild": str}
    wrong = [key for key, kind in types.items() if key in index and not isinstance(index[key], kind)]
    try:
        np.dtype(index["dtype"])
    except TypeError:
        wrong.append("dtype")
    if wrong or not isinstance(index["encoder"].get("name", ""), str):
        raise FeatureCacheError(f"feature cache index {index_path} is damaged: field(s) "
                                f"{sorted(set(wrong)) or ['encoder']} have the wrong type")
    return index


def open_cache(path, image_ids=None, encoder=None, allow_incomplete=False, mode="r"):
    """Open a feature cache, checking it against the data and the encoder.

    Inputs:
    - path: the cache (any of its three file names, or their common stem)
    - image_ids: ids the caller needs (all must be cached), or None
    - encoder: the encoder the caller uses (name, version and input settings
      must match the ones that made the cache), or None to skip the check
    - allow_incomplete: accept a cache whose extraction has not finished
    - mode: "r" (read-only memmaps) or "r+" (for resuming an extraction)
    Returns a FeatureCache. Raises FileNotFoundError (no cache) or
    FeatureCacheError (mismatch, incomplete, corrupt), with the rebuild command.
    """
    files = cache_paths(path)
    if not files["index"].exists():
        raise FileNotFoundError(f"no feature cache at {files['index']}; build it with "
                                "`python -m captioning features --data DIR --out "
                                f"{files['index'].with_suffix('')}`")
    index = _read_index(files["index"])
    rebuild = index.get("rebuild", "python -m captioning features --data DIR")
    if index["format"] != FORMAT_VERSION:
        raise FeatureCacheError(f"feature cache {files['index']} has format {index['format']}, "
                                f"this code reads {FORMAT_VERSION}; rebuild it: {rebuild} --overwrite")
    if encoder is not None:
        want, have = encoder_identity(encoder), index["encoder"]
        if want != have:
            raise FeatureCacheError(
                f"feature cache {files['index']} was made by encoder {have} but you use {want}; "
                f"rebuild it: {rebuild} --overwrite")
    n = len(index["image_ids"])
    if not allow_incomplete and index["complete"] < n:
        raise FeatureCacheError(
            f"feature cache {files['index']} is incomplete ({index['complete']} of {n} images); "
            f"finish it by running the same command again: {rebuild}")
    arrays = {}
    for kind in ("grid", "pooled"):
        try:
            arrays[kind] = np.load(files[kind], mmap_mode=mode)
        except FileNotFoundError:
            raise FeatureCacheError(f"feature cache file {files[kind]} is missing; rebuild it: "
                                    f"{rebuild} --overwrite") from None
        except (ValueError, EOFError) as exc:   # EOFError: an empty file
            raise FeatureCacheError(f"feature cache file {files[kind]} is corrupt ({exc or 'empty'}); "
                                    f"rebuild it: {rebuild} --overwrite") from exc
        expected = tuple(index[f"{kind}_shape"])
        if arrays[kind].shape != expected or arrays[kind].dtype != np.dtype(index["dtype"]):
            raise FeatureCacheError(
                f"feature cache file {files[kind]} holds {arrays[kind].dtype} {arrays[kind].shape} but its "
                f"index says {index['dtype']} {expected}; rebuild it: {rebuild} --overwrite")
    cache = FeatureCache(files["index"], index, arrays["grid"], arrays["pooled"])
    if image_ids is not None:
        cache.rows(list(image_ids))  # raises listing what is missing
    return cache


def _size_text(nbytes):
    return f"{nbytes / 1e9:.1f} GB" if nbytes >= 1e9 else f"{nbytes / 1e6:.1f} MB"


def cache_size(n, grid_shape, dtype):
    """(bytes, a line saying so) of a cache of n images with (L, D) grids: both arrays and the index."""
    l, d = grid_shape
    index_bytes = 2 ** 16 + 100 * n     # the index (JSON: ids and settings), rewritten as rows finish
    total = n * (l + 1) * d * np.dtype(dtype).itemsize + index_bytes
    return total, (f"the cache will take {_size_text(total)} ({n} photos x {l} x {d} {np.dtype(dtype).name} "
                   "+ pooled)")


def _check_free_space(files, n, grid_shape, dtype):
    """Refuse, before a file is made or grown, a cache the disk has no room for.

    The arrays are memory-mapped: writing rows into space the disk does not have kills the
    process with SIGBUS, no message. Needed: the full size of both arrays, less what their
    files already hold on disk (a cache being resumed, or the old files an --overwrite replaces).
    """
    total, _ = cache_size(n, grid_shape, dtype)
    needed = total - allocated_bytes(files["grid"]) - allocated_bytes(files["pooled"])
    folder = files["index"].absolute().parent
    while not folder.exists():                                      # made later by _create_cache
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise FeatureCacheError(f"not enough disk space for the feature cache {files['grid']}: it needs "
                                f"{_size_text(needed)} more, {folder} has {_size_text(free)} free; "
                                "free some space or choose another --out")


def _create_cache(files, image_ids, identity, grid_shape, dtype, rebuild, extra):
    """Allocate the two .npy files, then commit an index with complete = 0."""
    files["index"].parent.mkdir(parents=True, exist_ok=True)
    n, (l, d) = len(image_ids), grid_shape
    for kind, shape in (("grid", (n, l, d)), ("pooled", (n, d))):
        create_npy(files[kind], shape, dtype, "the feature cache")
    index = {"format": FORMAT_VERSION, "encoder": identity, "image_ids": list(image_ids),
             "grid_shape": [n, l, d], "pooled_shape": [n, d], "dtype": np.dtype(dtype).name,
             "complete": 0, "skipped": [], "rebuild": rebuild, **extra}
    _write_json_atomic(files["index"], index)
    return index


def _probe_grid_shape(encoder, image_paths, skip_bad):
    """(L, D) of the encoder's grid, from the first image that decodes."""
    from .data.images import ImageDecodeError, load_images

    for path in image_paths:
        try:
            probe, _, _ = load_images([path], **encoder.preprocess)
        except (FileNotFoundError, ImageDecodeError):
            if skip_bad:
                continue
            raise
        return tuple(encoder.features(probe)[0].shape[1:])
    raise FeatureCacheError("extract_features: none of the images could be decoded")


def _existing_cache(out_path, encoder, image_ids, dtype, overwrite):
    """The cache at `out_path` opened for resuming, if it is one for these ids, encoder and dtype;
    None if there is none, or if it is another one and `overwrite` is set (else FeatureCacheError)."""
    files = cache_paths(out_path)
    if not files["index"].exists():
        return None
    try:
        cache = open_cache(out_path, encoder=encoder, allow_incomplete=True, mode="r+")
        if cache.image_ids != image_ids or cache.grid.dtype != dtype:
            raise FeatureCacheError(
                f"feature cache {files['index']} holds other images ({len(cache.image_ids)} ids) "
                f"or another dtype ({cache.grid.dtype})")
    except FeatureCacheError as exc:
        if not overwrite:
            raise FeatureCacheError(f"{exc}. Use --overwrite (overwrite=True) to replace it, "
                                    "or choose another --out") from None
        return None
    return cache


def extract_features(encoder, image_paths, image_ids, out_path, batch_size=8, progress=True,
                     dtype=np.float16, overwrite=False, skip_bad=False, rebuild=None, workers=2,
                     extra_index=None, announce=None):
    """Encode images into the feature cache at `out_path`, resuming if possible.

    Inputs:
    - encoder: has name, version, preprocess {size, resize, mean, std} and
      features(images) -> (grid (B, L, D), pooled (B, D)), e.g. EfficientNetLite0
    - image_paths, image_ids: N files and their ids (row order of the cache)
    - out_path: the cache name (see cache_paths)
    - batch_size: images decoded and encoded at once (memory stays bounded by it)
    - progress: draw a progress bar on stderr
    - dtype: storage dtype (float16 halves the disk size; ReLU6 features fit it)
    - overwrite: replace an existing cache made for other ids or another encoder
    - skip_bad: leave out (zero rows, listed in index["skipped"]) images that
      cannot be decoded, instead of stopping with the file's name
    - rebuild: the command line to record in the index (for error messages)
    - announce: None, or called with a line saying the cache's size on disk
      (cache_size) before rows are written, for a new or resumed cache
    Returns the FeatureCache (complete). An existing complete cache for the same
    ids and encoder is returned as is; a partial one is resumed.
    """
    image_paths, image_ids = [str(p) for p in image_paths], [str(i) for i in image_ids]
    if len(image_paths) != len(image_ids):
        raise ValueError(f"extract_features: {len(image_paths)} paths but {len(image_ids)} ids")
    if not image_ids:
        raise ValueError("extract_features: no images to encode")
    if batch_size < 1:
        raise ValueError(f"extract_features: batch_size must be >= 1, got {batch_size}")
    files = cache_paths(out_path)
    rebuild = rebuild or f"python -m captioning features --out {files['index'].with_suffix('')}"
    dtype = np.dtype(dtype)
    remove_stale_temporaries(files["index"])    # an index write cut short by a kill -9

    cache = _open_for_writing(files, out_path, encoder, image_paths, image_ids, dtype, overwrite, skip_bad,
                              rebuild, extra_index, announce or (lambda line: None))
    _fill_cache(cache, files, encoder, image_paths, image_ids, batch_size, skip_bad, workers, progress)
    return open_cache(out_path, encoder=encoder)


def _open_for_writing(files, out_path, encoder, image_paths, image_ids, dtype, overwrite, skip_bad, rebuild,
                      extra_index, announce):
    """The cache to fill: the existing one for these ids, encoder and dtype (its disk space reserved
    when rows are missing), else a new one, made after checking the free space. Its size is
    announced first, unless it is complete."""
    cache = _existing_cache(out_path, encoder, image_ids, dtype, overwrite)
    if cache is None:
        # the grid size: encode one image to learn (L, D) before allocating
        grid_shape = _probe_grid_shape(encoder, image_paths, skip_bad)
        announce(cache_size(len(image_ids), grid_shape, dtype)[1])
        _check_free_space(files, len(image_ids), grid_shape, dtype)
        if files["index"].exists():
            os.unlink(files["index"])  # first: a half-rewritten cache must never look valid
        _create_cache(files, image_ids, encoder_identity(encoder), grid_shape, dtype, rebuild, extra_index or {})
        cache = open_cache(out_path, allow_incomplete=True, mode="r+")
    elif cache.complete < len(image_ids):   # resuming (a cache made sparse may still need space)
        announce(cache_size(len(image_ids), cache.grid.shape[1:], dtype)[1])
        _check_free_space(files, len(image_ids), cache.grid.shape[1:], dtype)
        for kind in ("grid", "pooled"):
            reserve_disk(files[kind], "the feature cache")
    return cache


def _fill_cache(cache, files, encoder, image_paths, image_ids, batch_size, skip_bad, workers, progress):
    """Encode the rows from cache.complete on, committing the index every COMMIT_SECONDS."""
    from .data.images import load_images

    index, dtype = cache.index, cache.grid.dtype
    n, start = len(image_ids), cache.complete
    bar = ProgressBar("features", n, start=start) if progress else None
    done = committed = start
    last_commit = time.monotonic()

    def commit(done):
        # rows first, on disk; only then does the index say they are done
        cache.grid.flush()
        cache.pooled.flush()
        index["complete"] = done
        _write_json_atomic(files["index"], index)

    try:
        for begin in range(start, n, batch_size):
            end = min(begin + batch_size, n)
            batch, kept, _ = load_images(image_paths[begin:end], skip_bad=skip_bad, workers=workers,
                                         **encoder.preprocess)
            grid = np.zeros((end - begin,) + cache.grid.shape[1:], dtype=dtype)
            pooled = np.zeros((end - begin,) + cache.pooled.shape[1:], dtype=dtype)
            if len(kept):
                g, p = encoder.features(batch)
                grid[kept], pooled[kept] = backend.to_numpy(g), backend.to_numpy(p)
            cache.grid[begin:end] = grid
            cache.pooled[begin:end] = pooled
            kept_set = set(kept)
            index["skipped"] = index.get("skipped", []) + [image_ids[begin + i] for i in range(end - begin)
                                                          if i not in kept_set]
            # rows up to `end` are in the memmaps now: commit them every few seconds
            # (and at the end, or when interrupted: see finally)
            done = end
            if done == n or time.monotonic() - last_commit >= COMMIT_SECONDS:
                commit(done)
                committed, last_commit = done, time.monotonic()
            if bar:
                bar.update(end)
    finally:
        if bar:
            bar.finish()
        if done > committed:
            commit(done)  # interrupted: keep the batches that did finish
