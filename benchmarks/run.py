"""Speed benchmarks of the heavy ops, against the machine's own matrix-multiply rate and PyTorch.

    python benchmarks/run.py [--backend numpy|cupy] [--quick] [--only NAME ...] [--repeat K] [--json OUT]

Not part of the test suite. Every benchmark times forward + backward (or a
forward pass / a decode, where that is the job) of our code at a realistic
float32 shape, takes the MEDIAN of K timed runs after warm-up runs, and
reports:
- ms: our median time;
- GFLOP/s: the benchmark's FLOP count (formula printed with it) / ms;
- %GEMM: that rate as a fraction of a large float32 matrix product measured
  in the same run (the machine's practical peak for this library);
- torch ms and ours/torch: PyTorch's median time for the same computation,
  timed in alternation with ours (so load from other processes hits both),
  when torch is importable (on --backend cupy only when torch sees a GPU).
Each torch comparison first checks that torch computes the same numbers.

Timing is honest on the GPU: nn.backend.synchronize() (and
torch.cuda.synchronize()) before the clock starts and before it stops.
Thread counts: numpy's BLAS threads (threadpoolctl when installed, else
asked from the OpenBLAS library numpy loaded, else the environment / CPU
count) and torch.set_num_threads(the same count).
"""
import argparse
import cProfile
import ctypes
import io
import json
import os
import platform
import pstats
import statistics
import sys
import tempfile
import time
import traceback

# Idle OpenBLAS workers spin for ~0.1 s after each product by default, taking
# the cores that torch's threads (timed in alternation) and nn.conv's thread
# pool need. nn sets this too, but only if it is imported before numpy.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

import numpy as np                                       # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))   # run from anywhere

from nn import backend                                   # noqa: E402
from nn.conv import conv_backward, conv_forward, same_padding   # noqa: E402
from nn.recurrent import lstm_backward, lstm_forward     # noqa: E402

try:
    import torch
    import torch.nn.functional as TF
except ImportError:                                      # torch is optional
    torch = None

BENCHMARKS = ["gemm", "conv3x3", "depthwise", "efficientnet", "lstm", "attention_train", "beam"]


# ---------------------------------------------------------------- machine and threads

def blas_threads():
    """(threads numpy's BLAS uses, how we know)."""
    try:
        import threadpoolctl
        infos = [i for i in threadpoolctl.threadpool_info() if i.get("user_api") == "blas"]
        if infos:
            return int(infos[0]["num_threads"]), f"threadpoolctl ({infos[0].get('internal_api')})"
    except ImportError:
        pass
    try:   # ask the OpenBLAS that numpy loaded (symbol names of numpy's scipy-openblas wheels)
        paths = sorted({line.split()[-1] for line in open("/proc/self/maps") if "openblas" in line.lower()})
        for path in paths:
            lib = ctypes.CDLL(path)
            for symbol in ("scipy_openblas_get_num_threads64_", "openblas_get_num_threads64_",
                           "openblas_get_num_threads"):
                if hasattr(lib, symbol):
                    return int(getattr(lib, symbol)()), f"{symbol}() of {os.path.basename(path)}"
    except OSError:
        pass
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name]), f"${name}"
    return os.cpu_count() or 1, "os.cpu_count() (BLAS default; not verified)"


def set_blas_threads(count):
    """Set numpy's BLAS thread count at run time; returns how, or raises RuntimeError."""
    try:
        import threadpoolctl
        threadpoolctl.threadpool_limits(count, user_api="blas")
        return "threadpoolctl"
    except ImportError:
        pass
    paths = sorted({line.split()[-1] for line in open("/proc/self/maps") if "openblas" in line.lower()})
    for path in paths:
        lib = ctypes.CDLL(path)
        for symbol in ("scipy_openblas_set_num_threads64_", "openblas_set_num_threads64_",
                       "openblas_set_num_threads"):
            if hasattr(lib, symbol):
                getattr(lib, symbol)(ctypes.c_int(count))
                return symbol
    raise RuntimeError("--threads: cannot set the BLAS thread count here (install threadpoolctl, or "
                       "set OPENBLAS_NUM_THREADS / OMP_NUM_THREADS before starting Python)")


def cpu_name():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


# ---------------------------------------------------------------- timing

class Timer:
    """Median wall time of callables, synchronising the GPU(s) around each run."""

    def __init__(self, repeat, warmup, torch_cuda):
        self.repeat, self.warmup, self.torch_cuda = repeat, warmup, torch_cuda

    def sync(self):
        backend.synchronize()
        if self.torch_cuda:
            torch.cuda.synchronize()

    def once(self, fn):
        self.sync()
        start = time.perf_counter()
        fn()
        self.sync()
        return time.perf_counter() - start

    def compare(self, ours, theirs=None, repeat=None, warmup=None):
        """Medians (ours, theirs or None), the two timed alternately run by run."""
        repeat = repeat or self.repeat
        for _ in range(self.warmup if warmup is None else warmup):
            ours()
            if theirs is not None:
                theirs()
        times_ours, times_theirs = [], []
        for _ in range(repeat):
            times_ours.append(self.once(ours))
            if theirs is not None:
                times_theirs.append(self.once(theirs))
        return (statistics.median(times_ours),
                statistics.median(times_theirs) if theirs is not None else None)


class Bench:
    """Shared state: backend, sizes, torch device, results table."""

    def __init__(self, args):
        self.args = args
        self.xp = backend.use(args.backend)
        self.gpu = args.backend == "cupy"
        self.quick = args.quick
        self.rows = []
        self.pending_profile = None
        self.gemm_gflops = None
        if args.threads:
            set_blas_threads(args.threads)
            # nn.conv's thread pool (depthwise convs, stride-1 copies) follows OMP_NUM_THREADS (read at each call)
            os.environ["OMP_NUM_THREADS"] = str(args.threads)
        self.threads, self.threads_source = blas_threads()
        self.torch_device = None
        self.torch_note = "torch not importable: no comparison"
        if torch is not None:
            if not self.gpu:
                torch.set_num_threads(self.threads)
                self.torch_device = "cpu"
                self.torch_note = (f"torch {torch.__version__} on CPU, torch.set_num_threads({self.threads}) "
                                   f"-> {torch.get_num_threads()} threads")
            elif torch.cuda.is_available():
                self.torch_device = "cuda"
                # Compare float32 with float32: cuDNN convs would use TF32 by default.
                torch.backends.cudnn.allow_tf32 = False
                torch.backends.cuda.matmul.allow_tf32 = False
                self.torch_note = (f"torch {torch.__version__} on {torch.cuda.get_device_name()} "
                                   "(TF32 off for matmul and cuDNN)")
            else:
                self.torch_note = f"torch {torch.__version__} has no CUDA here: no comparison with cupy"
        warmup = 2 if self.gpu else 1
        repeat = args.repeat or (3 if self.quick else (10 if self.gpu else 5))
        self.timer = Timer(repeat, warmup, self.torch_device == "cuda")
        self.rng = np.random.default_rng(0)

    def compare(self, ours, theirs=None, repeat=None, warmup=None):
        """Timer.compare, then (--profile) one profiled run of ours with its top functions printed."""
        result = self.timer.compare(ours, theirs, repeat, warmup)
        if self.args.profile:
            profiler = cProfile.Profile()
            profiler.runcall(ours)
            self.timer.sync()
            text = io.StringIO()
            pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(self.args.profile)
            body = text.getvalue()
            body = body[body.find("   ncalls"):].rstrip()
            self.pending_profile = ["  profile of one run of ours (top functions by own time; a NumPy/BLAS "
                                    "call's time counts in its caller):"] + ["    " + l for l in body.splitlines()]
        return result

    # -- helpers
    def array(self, shape, scale=1.0, low=None):
        """A float32 array on our backend (drawn with NumPy so both libraries see the same numbers)."""
        if low is None:
            a = self.rng.standard_normal(shape, dtype=np.float32) * np.float32(scale)
        else:
            a = self.rng.uniform(low, scale, shape).astype(np.float32)
        return backend.asarray(a)

    def tensor(self, a, requires_grad=False):
        t = torch.from_numpy(np.ascontiguousarray(backend.to_numpy(a))).to(self.torch_device)
        return t.requires_grad_(requires_grad)

    def check(self, name, ours, theirs, rtol=1e-3):
        """max |ours - torch| / max |torch|; raises when above rtol (a broken comparison)."""
        a = backend.to_numpy(ours).astype(np.float64)
        b = theirs.detach().cpu().numpy().astype(np.float64)
        err = float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))
        if not err <= rtol:
            raise AssertionError(f"{name}: ours and torch disagree (relative error {err:.2e} > {rtol})")
        return err

    def add(self, name, shape, flops, flop_formula, ours_s, torch_s=None, unit=None, note=""):
        row = {"name": name, "shape": shape, "ms": ours_s * 1e3, "flops": flops, "flop_formula": flop_formula,
               "gflops": flops / ours_s / 1e9 if flops else None,
               "torch_ms": torch_s * 1e3 if torch_s else None,
               "ratio": ours_s / torch_s if torch_s else None, "note": note}
        if row["gflops"] and self.gemm_gflops:
            row["frac_gemm"] = row["gflops"] / self.gemm_gflops
        if unit:
            row["throughput"] = unit
        self.rows.append(row)
        print_row(row)
        if self.pending_profile:
            print("\n".join(self.pending_profile))
            row["profile"] = self.pending_profile[1:]
            self.pending_profile = None
        return row


# ---------------------------------------------------------------- benchmarks

def bench_gemm(b):
    n = 8192 if b.gpu else 2048
    x, y = b.array((n, n)), b.array((n, n))
    out = b.xp.empty((n, n), dtype=np.float32)
    flops = 2 * n ** 3
    theirs = None
    if b.torch_device:
        tx, ty = b.tensor(x), b.tensor(y)
        theirs = lambda: torch.matmul(tx, ty)   # noqa: E731
    ours_s, torch_s = b.compare(lambda: b.xp.matmul(x, y, out=out), theirs)
    b.gemm_gflops = flops / ours_s / 1e9
    b.add("gemm (float32 peak reference)", f"({n},{n}) @ ({n},{n})", flops, "2 n^3", ours_s, torch_s,
          note="xp.matmul; its GFLOP/s is the %GEMM denominator")


def _conv_pair(b, name, x_shape, w_shape, stride, pad, groups, note=""):
    """Time conv_forward + conv_backward (with bias) against F.conv2d + autograd."""
    x, w, bias = b.array(x_shape), b.array(w_shape, 0.1), b.array((w_shape[0],), 0.1)
    param = {"stride": stride, "pad": pad, "groups": groups}
    out, _ = conv_forward(x, w, bias, param)
    dout = b.array(out.shape)
    n, f, ho, wo = out.shape
    fwd_flops = 2 * n * f * w_shape[1] * w_shape[2] * w_shape[3] * ho * wo
    flops = 3 * fwd_flops

    def ours():
        o, cache = conv_forward(x, w, bias, param)
        conv_backward(dout, cache)

    theirs, err = None, None
    if b.torch_device:
        tx, tw, tb = b.tensor(x, True), b.tensor(w, True), b.tensor(bias, True)
        tdout = b.tensor(dout)
        top, bottom, left, right = (pad,) * 4 if isinstance(pad, int) else pad

        def torch_forward():
            if (top, left) == (bottom, right):
                return TF.conv2d(tx, tw, tb, stride, (top, left), 1, groups)
            return TF.conv2d(TF.pad(tx, [left, right, top, bottom]), tw, tb, stride, 0, 1, groups)

        def theirs():
            tx.grad = tw.grad = tb.grad = None
            torch_forward().backward(tdout)

        err = b.check(name, out, torch_forward())
        theirs()
        ours_out = conv_backward(dout, conv_forward(x, w, bias, param)[1])
        err = max(err, b.check(name + " dx", ours_out[0], tx.grad), b.check(name + " dw", ours_out[1], tw.grad))
    ours_s, torch_s = b.compare(ours, theirs)
    check = f"; max rel diff vs torch {err:.1e}" if err is not None else ""
    b.add(name, f"x {tuple(x_shape)} w {tuple(w_shape)} s{stride}", flops,
          "3 x 2 N F (C/groups) K K Ho Wo (fwd, dx, dw)", ours_s, torch_s, note=note + check)


def bench_conv3x3(b):
    n = 8 if b.quick and not b.gpu else 32
    _conv_pair(b, "conv 3x3 64->64 fwd+bwd", (n, 64, 64, 64), (64, 64, 3, 3), 1, 1, 1,
               note="pad 1, bias")


def bench_depthwise(b):
    n = 8 if b.quick and not b.gpu else 32
    # EfficientNet-Lite0 depthwise layers at 224x224 input: (channels, size, kernel, stride)
    for c, size, k, s, where in [(144, 56, 3, 1, "block 2"), (96, 112, 3, 2, "block 1"),
                                 (240, 28, 5, 1, "block 4"), (144, 56, 5, 2, "block 3")]:
        pad = same_padding(size, k, s) + same_padding(size, k, s)
        _conv_pair(b, f"depthwise {k}x{k} s{s} fwd+bwd", (n, c, size, size), (c, 1, k, k), s, pad, c,
                   note=f"Lite0 {where}, TF-same pad {pad}")


def efficientnet_flops(n, size=224):
    """2 x multiply-adds of every conv of EfficientNet-Lite0 at size x size (biases, ReLU6 not counted)."""
    from captioning.encoders import efficientnet as effnet
    total, hw = 0, size

    def conv(c_in, c_out, k, stride, groups):
        nonlocal total, hw
        hw = -(-hw // stride)
        total += 2 * n * c_out * (c_in // groups) * k * k * hw * hw

    conv(3, effnet.STEM_CHANNELS, 3, 2, 1)
    for blk in effnet.blocks():
        hidden = blk.in_channels * blk.expand
        if blk.expand != 1:
            conv(blk.in_channels, hidden, 1, 1, 1)
        conv(hidden, hidden, blk.kernel, blk.stride, hidden)
        conv(hidden, blk.out_channels, 1, 1, 1)
    conv(effnet.STAGES[-1][5], effnet.HEAD_CHANNELS, 1, 1, 1)
    return total


def bench_efficientnet(b):
    from captioning.encoders.efficientnet import EfficientNetLite0, lite0_weights_path
    from captioning.pth import load_state_dict
    n = 128 if b.gpu else (8 if b.quick else 32)
    try:
        state_dict = load_state_dict(lite0_weights_path())
    except FileNotFoundError as exc:
        print(f"  efficientnet skipped: {exc}")
        return
    model = EfficientNetLite0(state_dict).to_backend()
    images = b.array((n, 3, 224, 224))
    theirs, note = None, "feature_map (N,1280,7,7), BN folded into convs"
    if b.torch_device:
        from torch_reference import TorchEfficientNetLite0
        reference = TorchEfficientNetLite0(state_dict, b.torch_device)
        timages = b.tensor(images)

        def theirs():
            with torch.no_grad():
                reference(timages)

        with torch.no_grad():
            err = b.check("efficientnet", model.feature_map(images[:4]), reference(timages[:4]))
        note += f"; max rel diff vs torch {err:.1e}"
    repeat = min(b.timer.repeat, 2) if b.quick else None
    ours_s, torch_s = b.compare(lambda: model.feature_map(images), theirs, repeat=repeat)
    flops = efficientnet_flops(n)
    b.add(f"EfficientNet-Lite0 forward, batch {n}", f"images ({n},3,224,224)", flops,
          f"sum over convs of 2 N F (C/groups) K K Ho Wo = {flops / n / 1e9:.2f} GFLOP/img",
          ours_s, torch_s, unit=f"{n / ours_s:.0f} img/s" + (f" (torch {n / torch_s:.0f})" if torch_s else ""),
          note=note)


def bench_lstm(b):
    N, T, D, H = 64, 20, 512, 512
    x, h0 = b.array((N, T, D)), b.array((N, H), 0.5)
    Wx, Wh, bias = b.array((D, 4 * H), D ** -0.5), b.array((H, 4 * H), H ** -0.5), b.array((4 * H,), 0.1)
    dh = b.array((N, T, H))

    def ours():
        h, cache = lstm_forward(x, h0, Wx, Wh, bias)
        lstm_backward(dh, cache)

    theirs, note = None, "lstm_forward + lstm_backward (c0 = 0)"
    if b.torch_device:
        from torch_reference import lstm_from_ours
        lstm = lstm_from_ours(backend.to_numpy(Wx), backend.to_numpy(Wh), backend.to_numpy(bias)).to(b.torch_device)
        tx, th0, tdh = b.tensor(x, True), b.tensor(h0[None], True), b.tensor(dh)
        tc0 = torch.zeros_like(th0)

        def theirs():
            tx.grad = th0.grad = None
            lstm.zero_grad(set_to_none=True)
            out, _ = lstm(tx, (th0, tc0))
            out.backward(tdh)

        h, cache = lstm_forward(x, h0, Wx, Wh, bias)
        dx = lstm_backward(dh, cache)[0]
        theirs()
        err = max(b.check("lstm h", h, lstm(tx, (th0, tc0))[0]), b.check("lstm dx", dx, tx.grad))
        kind = "cuDNN" if b.torch_device == "cuda" else "CPU"
        note = f"vs torch.nn.LSTM ({kind}) with the same weights; max rel diff {err:.1e}"
    ours_s, torch_s = b.compare(ours, theirs)
    flops = 3 * 2 * N * T * (D + H) * 4 * H
    b.add("LSTM fwd+bwd", f"N={N} T={T} D={D} H={H}", flops, "3 x 2 N T (D+H) 4H (fwd, d-inputs, d-weights)",
          ours_s, torch_s, note=note)


def attention_config(vocab=2500):
    # The Flickr8k training defaults of `python -m captioning train` (captioning/commands/train.py).
    return {"vocab_size": vocab, "feature_dim": 1280, "wordvec_dim": 256, "hidden_dim": 512,
            "attention_dim": 256, "dropout": 0.5, "doubly_stochastic": 1.0}


def random_captions(rng, n, steps, vocab):
    """(n, steps + 1): <START>=1, words in [4, vocab), <END>=2, <NULL>=0 padding; lengths 8..steps-1."""
    captions = np.zeros((n, steps + 1), dtype=np.int64)
    lengths = rng.integers(8, steps, size=n)
    for i, length in enumerate(lengths):
        captions[i, 0] = 1
        captions[i, 1:length + 1] = rng.integers(4, vocab, size=length)
        captions[i, length + 1] = 2
    return captions


def attention_flops(N, L, D, E, H, A, V, T):
    """Matrix-product FLOPs of one forward pass of ShowAttendTell (elementwise work not counted)."""
    init = 2 * N * D * H * 2 + 2 * N * L * D * A + 2 * T * N * E * 4 * H
    step = 2 * N * H * A + 2 * N * L * A + 2 * N * L * D + 2 * N * H + 2 * N * D * 4 * H + 2 * N * H * 4 * H
    return init + T * step + 2 * N * T * H * V


def bench_attention_train(b):
    from captioning.models import ShowAttendTell
    N, L, D, T = 64, 49, 1280, 20
    cfg = attention_config()
    model = ShowAttendTell(cfg, seed=0)
    features = b.array((N, L, D), 1.0, low=0.0)
    captions = backend.asarray(random_captions(b.rng, N, T, cfg["vocab_size"]))
    ours = lambda: model.loss(features, captions, dropout_seed=1)   # noqa: E731
    theirs, note = None, "ShowAttendTell.loss, dropout 0.5, lambda 1"
    if b.torch_device:
        from torch_reference import TorchShowAttendTell
        reference = TorchShowAttendTell(model.state_dict(), model.config, b.torch_device)
        tfeatures, tcaptions = b.tensor(features), torch.from_numpy(backend.to_numpy(captions)).to(b.torch_device)

        def theirs():
            reference.zero_grad()
            reference.loss(tfeatures, tcaptions, training=True).backward()

        # Same numbers with dropout off (the masks of the two libraries differ).
        model.eval()
        loss, grads = model.loss(features, captions)
        model.train()
        reference.zero_grad()
        tloss = reference.loss(tfeatures, tcaptions, training=False)
        tloss.backward()
        err = abs(loss - tloss.item()) / abs(tloss.item())
        for key in ("Wx", "Wh", "W_att_feat", "W_att_h", "W_out", "W_embed", "W_h0"):
            err = max(err, b.check(f"attention d{key}", grads[key], reference.grads()[key], rtol=2e-3))
        note = f"vs autograd re-implementation (benchmarks/torch_reference.py); loss+grads max rel diff {err:.1e}"
    ours_s, torch_s = b.compare(ours, theirs)
    flops = 3 * attention_flops(N, L, D, 256, 512, 256, cfg["vocab_size"], T)
    b.add("attention decoder train step", f"N={N} L={L} D={D} H=512 E=A=256 V={cfg['vocab_size']} T={T}",
          flops, "3 x forward matmul FLOPs (elementwise not counted)", ours_s, torch_s, note=note)


def bench_beam(b):
    from captioning.decoding import beam_search
    from captioning.models import ShowAttendTell
    images = 100 if b.quick else 1000
    cfg = attention_config()
    model = ShowAttendTell(cfg, seed=0).eval()
    features = b.array((images, 49, 1280), 1.0, low=0.0)
    inside, step_flops = [], []
    original_step = model.decode_step
    L, D, E, H, A, V = 49, 1280, cfg["wordvec_dim"], cfg["hidden_dim"], cfg["attention_dim"], cfg["vocab_size"]
    flops_per_row = 2 * (H * A + L * A + L * D + H + (E + D) * 4 * H + H * 4 * H + H * V)

    def timed_step(words, state):
        b.timer.sync()
        start = time.perf_counter()
        result = original_step(words, state)
        b.timer.sync()
        inside.append(time.perf_counter() - start)
        step_flops.append(flops_per_row * len(words))
        return result

    model.decode_step = timed_step
    steps = []

    def ours():
        inside.clear()
        step_flops.clear()
        result = beam_search(model, features, start_id=1, end_id=2, beam_size=3, max_length=20)
        steps.append((sum(inside), len(inside), result, sum(step_flops)))

    repeat, warmup = (1, 0) if b.quick else (min(b.timer.repeat, 3), b.timer.warmup)
    ours_s, _ = b.compare(ours, None, repeat=repeat, warmup=warmup)
    timed = steps[warmup:warmup + repeat]          # not the warm-up nor a --profile run
    in_model = statistics.median(s[0] for s in timed)
    calls = timed[-1][1]
    finished = int(timed[-1][2].finished.sum())
    init_flops = 2 * images * L * D * A + 2 * 2 * images * D * H
    flops = timed[-1][3] + init_flops
    b.add(f"beam search, beam 3, {images} images", f"attention model, V={cfg['vocab_size']}, max 20 steps",
          flops, "matmul FLOPs of init_decode_state + every decode_step call (rows x per-row FLOPs)",
          ours_s, unit=f"{images / ours_s:.0f} img/s",
          note=f"{100 * in_model / ours_s:.0f}% of the time inside model.decode_step ({calls} calls); "
               f"untrained model: {finished}/{images} captions ended")
    b.rows[-1]["decode_step_share"] = in_model / ours_s


# ---------------------------------------------------------------- output

COLUMNS = ("benchmark", "ms", "GFLOP/s", "%GEMM", "torch ms", "ours/torch")


def print_row(row, details=True):
    def fmt(value, spec):
        width = spec.split(".")[0]
        return format(value, spec) if value is not None else format("-", f">{width}")
    frac = row.get("frac_gemm")
    print(f"{row['name']:<38} {fmt(row['ms'], '10.1f')} {fmt(row['gflops'], '9.1f')} "
          f"{(format(100 * frac, '6.0f') + '%') if frac else '      -':>7} {fmt(row['torch_ms'], '10.1f')} "
          f"{fmt(row['ratio'], '10.2f')}")
    if not details:
        if row.get("throughput"):
            print(f"    {row['throughput']}")
        return
    details = [row["shape"]]
    if row.get("throughput"):
        details.append(row["throughput"])
    if row["flop_formula"]:
        details.append(f"FLOPs = {row['flop_formula']} = {row['flops'] / 1e9:.2f} GFLOP")
    if row["note"]:
        details.append(row["note"])
    for line in details:
        print(f"    {line}")
    sys.stdout.flush()


def header(b):
    lines = [f"benchmarks/run.py  {time.strftime('%Y-%m-%d %H:%M:%S %Z')}",
             f"command: python {' '.join(sys.argv)}",
             f"backend: {b.args.backend}, dtype float32, median of {b.timer.repeat} runs after "
             f"{b.timer.warmup} warm-up run(s){', --quick sizes' if b.quick else ''}",
             f"python {platform.python_version()}, numpy {np.__version__}"]
    if b.gpu:
        props = b.xp.cuda.runtime.getDeviceProperties(b.xp.cuda.Device().id)
        name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        lines.append(f"device: GPU {name}, cupy {b.xp.__version__}")
    else:
        lines.append(f"device: CPU {cpu_name()}, {os.cpu_count()} logical CPUs, "
                     f"load average {os.getloadavg()[0]:.1f} at start")
    lines.append(f"numpy BLAS threads: {b.threads} (from {b.threads_source}); nn.conv thread pool: "
                 f"{_conv_threads()}; OPENBLAS_THREAD_TIMEOUT={os.environ.get('OPENBLAS_THREAD_TIMEOUT')}")
    lines.append(b.torch_note)
    return lines


def _conv_threads():
    from nn import conv
    return conv._cpu_threads() if hasattr(conv, "_cpu_threads") else "n/a"


def write_json(path, payload):
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".bench-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(payload, f, indent=1)
    os.replace(tmp, path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=["numpy", "cupy"], default="numpy")
    parser.add_argument("--quick", action="store_true", help="smaller batches and fewer repeats (~1-2 min on CPU)")
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, metavar="NAME",
                        help=f"run only these (the GEMM reference always runs): {', '.join(BENCHMARKS)}")
    parser.add_argument("--repeat", type=int, default=None, help="timed runs per benchmark (median reported)")
    parser.add_argument("--json", metavar="OUT", help="also write the results as JSON")
    parser.add_argument("--profile", type=int, nargs="?", const=12, default=0, metavar="TOP",
                        help="after timing, profile one run of ours with cProfile and print the TOP functions")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for numpy's BLAS, nn.conv's thread pool and torch (default: BLAS's own)")
    args = parser.parse_args(argv)
    if args.repeat is not None and args.repeat < 1:
        parser.error("--repeat must be >= 1")
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be >= 1")

    b = Bench(args)
    lines = header(b)
    print("\n".join(lines))
    print()
    print(f"{COLUMNS[0]:<38} {COLUMNS[1]:>10} {COLUMNS[2]:>9} {COLUMNS[3]:>7} {COLUMNS[4]:>10} {COLUMNS[5]:>10}")
    chosen = [name for name in BENCHMARKS if name == "gemm" or not args.only or name in args.only]
    started = time.perf_counter()
    failed = []
    for name in chosen:
        try:
            globals()[f"bench_{name}"](b)
        except Exception:                   # keep going: one broken row must not cost a GPU session
            if name == "gemm":
                raise
            failed.append(name)
            print(f"{name} FAILED:\n" + traceback.format_exc(), flush=True)
    # The load on a shared machine changes during a run: measure the GEMM rate again at the end
    # and take the better of the two as the machine's rate for the summary's %GEMM.
    if len(chosen) > 1:
        n = 8192 if b.gpu else 2048
        x, y = b.array((n, n)), b.array((n, n))
        end_s, _ = b.timer.compare(lambda: b.xp.matmul(x, y))
        end_gflops = 2 * n ** 3 / end_s / 1e9
        start_gflops, b.gemm_gflops = b.gemm_gflops, max(b.gemm_gflops, end_gflops)
        for row in b.rows:
            if row["gflops"]:
                row["frac_gemm"] = row["gflops"] / b.gemm_gflops
        print(f"\nsummary (%GEMM against the better GEMM rate of the start, {start_gflops:.1f}, "
              f"and the end, {end_gflops:.1f} GFLOP/s):")
        print(f"{COLUMNS[0]:<38} {COLUMNS[1]:>10} {COLUMNS[2]:>9} {COLUMNS[3]:>7} {COLUMNS[4]:>10} "
              f"{COLUMNS[5]:>10}")
        for row in b.rows:
            print_row(row, details=False)
    total = time.perf_counter() - started
    print(f"\ntotal {total:.0f} s; GEMM reference {b.gemm_gflops:.1f} GFLOP/s")
    if args.json:
        write_json(args.json, {"header": lines, "rows": b.rows, "gemm_gflops": b.gemm_gflops,
                               "threads": b.threads, "gemm_gflops_note": "better of start and end", "backend": args.backend, "quick": args.quick,
                               "seconds": total, "failed": failed})
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
