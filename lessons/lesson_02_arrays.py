"""Lesson 2: arrays on the CPU or the GPU.

Everything a neural network computes is arithmetic on n-dimensional arrays.
NumPy does it on the CPU; CuPy offers the same functions on an NVIDIA GPU.
This project writes every layer once, against whichever of the two its
inputs come from, and has ONE switch (`nn.backend`) that says where new
arrays are made.
"""
import time

import numpy

from nn import backend

TITLE = "Arrays on CPU or GPU: NumPy, CuPy and the one backend switch"
SECONDS = 0.5


def step_1_images_are_arrays(ctx):
    """An image batch is a 4-d array: N images x C channels x H rows x W columns (NCHW).

    A colour image of 64x64 pixels is 3 x 64 x 64 numbers; a mini-batch of 8 of
    them is one array of shape (8, 3, 64, 64). The dtype says how each number
    is stored: float32 (4 bytes) for training, float64 (8 bytes) when we need
    precision, e.g. for gradient checks. In memory the numbers lie in one
    row-major block: the last index varies fastest, so image 0's red channel
    is the first 64 x 64 numbers. `axis=(0, 2, 3)` reduces over images, rows
    and columns and leaves one mean per channel.
    """
    gen = numpy.random.default_rng(0)
    images = gen.random((8, 3, 64, 64), dtype=numpy.float32)
    red_of_first = images[0, 0]          # indexing: image 0, channel 0 -> a 64x64 matrix
    per_channel_mean = images.mean(axis=(0, 2, 3))   # reduce over batch, rows, columns
    ctx.check(numpy.array_equal(images.reshape(-1)[:64 * 64], red_of_first.reshape(-1)),
              "image 0, channel 0 is the first 64 x 64 numbers in memory")
    ctx.check(all(abs(per_channel_mean[c] - images[:, c].mean()) < 1e-6 for c in range(3)),
              "axis=(0, 2, 3) leaves one mean per channel")
    ctx.check(images.astype(numpy.float64).nbytes == 2 * images.nbytes, "float64 takes twice the memory")
    return {"shape": images.shape, "dtype": images.dtype, "megabytes": images.nbytes / 2**20,
            "one channel": red_of_first.shape, "mean per channel": per_channel_mean.round(4)}


def step_2_vectorise(ctx):
    """Vectorised code: one array expression instead of a Python loop.

    Each Python-level operation costs far more than the arithmetic it does, so
    layers are written as a few whole-array operations (matrix products,
    broadcasting), never as loops over pixels. Here: the same matrix product
    with three Python loops, and with `@`.
    """
    gen = numpy.random.default_rng(1)
    a = gen.standard_normal((40, 30))
    b = gen.standard_normal((30, 20))

    started = time.perf_counter()
    loops = numpy.zeros((40, 20))
    for i in range(40):
        for j in range(20):
            for k in range(30):
                loops[i, j] += a[i, k] * b[k, j]
    loop_seconds = time.perf_counter() - started

    started = time.perf_counter()
    fast = a @ b
    matmul_seconds = time.perf_counter() - started

    ctx.check(numpy.allclose(loops, fast), "the loops and @ must agree")
    return {"loops (ms)": loop_seconds * 1e3, "a @ b (ms)": matmul_seconds * 1e3,
            "speed-up": loop_seconds / max(matmul_seconds, 1e-9),
            "largest difference": float(numpy.abs(loops - fast).max())}


def step_3_the_switch(ctx):
    """The backend switch: `nn.backend.use("numpy" | "cupy")`, `backend.xp()`.

    `backend.xp()` is the array module of the current backend (numpy or cupy);
    new arrays - parameters, random numbers, data batches - are made with it.
    The same switch is set by the NN_BACKEND environment variable and by
    `--backend` on every command line (this runner included).
    Random numbers: NumPy's and CuPy's generators give DIFFERENT numbers for
    the same seed, so the lessons draw their data with NumPy and move it to
    the backend (`ctx.rng(seed)` does both): the same numbers on either.
    """
    xp = backend.xp()
    drawn = numpy.random.default_rng(0).standard_normal((3, 4))   # the same numbers on every backend
    weights = backend.asarray(drawn, dtype=backend.default_float())   # ... moved to the current one
    ctx.check(backend.get_array_module(weights) is xp, "new arrays are made by the current backend")
    ctx.check(numpy.array_equal(backend.to_numpy(ctx.rng(0).standard_normal((3, 4))), drawn),
              "ctx.rng(0) draws NumPy's numbers")
    return {"current backend": backend.name(), "array module": xp.__name__,
            "weights made on": type(weights).__module__, "weights dtype": weights.dtype,
            "default dtype for new parameters": numpy.dtype(backend.default_float())}


def step_4_code_that_runs_on_both(ctx):
    """Write an op once: ask the INPUT which module it belongs to.

    `backend.get_array_module(x)` returns numpy for NumPy arrays and cupy for
    CuPy arrays, so an op follows its data. Every op in `nn` is written this
    way. Mixing a NumPy and a CuPy array in one call is an error rather than a
    silent (slow) copy between devices.
    """
    def standardise(x):
        xp = backend.get_array_module(x, op="standardise")
        return (x - xp.mean(x)) / xp.std(x)

    x = backend.asarray(numpy.arange(6.0))    # on the current backend
    z = standardise(x)
    ctx.check(abs(float(z.mean())) < 1e-12 and abs(float(z.std()) - 1) < 1e-12, "mean 0, std 1")
    return {"x": backend.to_numpy(x), "standardised": backend.to_numpy(z).round(4),
            "computed by": backend.get_array_module(z).__name__}


def step_5_the_gpu(ctx):
    """The GPU, if there is one: same code, same numbers, different device.

    With CuPy installed and an NVIDIA GPU visible, the arrays move to GPU
    memory with `backend.asarray` after `backend.use("cupy")` and come back
    with `backend.to_numpy`. Without one, asking for CuPy gives one clear
    error saying how to install it - shown here.
    """
    previous = backend.name()
    gen = numpy.random.default_rng(2)
    a = gen.standard_normal((256, 256)).astype(numpy.float32)
    try:
        backend.use("cupy")
    except backend.BackendError as exc:
        print(f"No GPU backend here; the message you get is:\n  {exc}")
        return {"gpu": False}
    try:
        a_gpu = backend.asarray(a)
        product = backend.to_numpy(a_gpu @ a_gpu)
        try:
            backend.get_array_module(a, a_gpu, op="demo")
            mixed = "no error?"
        except TypeError as exc:
            mixed = str(exc)
    finally:
        backend.use(previous)
    difference = float(numpy.abs(product - a @ a).max() / numpy.abs(a @ a).max())
    ctx.check(difference < 1e-4, "CPU and GPU products agree to float32 precision")
    return {"gpu": True, "array on": type(a_gpu).__module__, "relative difference CPU vs GPU": difference,
            "mixing NumPy and CuPy": mixed}


def step_6_float32_vs_float64(ctx):
    """Precision: why gradient checks use float64.

    float32 keeps about 7 significant digits, float64 about 16. A finite
    difference (f(x+h) - f(x-h)) / 2h with h = 1e-5 subtracts two nearly
    equal numbers, so in float32 most digits cancel: layers keep whatever
    dtype they are given, training runs in float32 and checks in float64.
    """
    def derivative_of_square(x, dtype, h=1e-5):
        x = dtype(x)
        return (dtype(x + dtype(h)) ** 2 - dtype(x - dtype(h)) ** 2) / dtype(2 * h)

    exact = 2 * 3.0
    error32 = abs(float(derivative_of_square(3.0, numpy.float32)) - exact) / exact
    error64 = abs(float(derivative_of_square(3.0, numpy.float64)) - exact) / exact
    ctx.check(error32 > 1e3 * error64, "in float32 the finite difference loses most of its digits")
    return {"float32 epsilon": float(numpy.finfo(numpy.float32).eps),
            "float64 epsilon": float(numpy.finfo(numpy.float64).eps),
            "relative error of d(x^2)/dx in float32": error32,
            "relative error of d(x^2)/dx in float64": error64}


if __name__ == "__main__":  # python lessons/lesson_02_arrays.py [--no-pause] [--backend cupy]
    import pathlib
    import sys
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
    import run_lesson
    sys.exit(run_lesson.main([__file__] + sys.argv[1:]))
