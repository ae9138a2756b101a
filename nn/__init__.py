"""nn: neural-network layers written by hand, forward and backward, on NumPy or CuPy.

- `nn.backend`: the one NumPy/CuPy switch and array helpers.
- `nn.functional`: every op as a CS231n-style pair `*_forward -> (out, cache)`,
  `*_backward(dout, cache) -> grads` (grouped in dense, conv, pool,
  normalization, losses, embedding, recurrent, attention, bidirectional,
  ranking).
- `nn.layers`: thin classes holding `params` and `grads` for building models
  (grouped in module, dense_layers, conv_layers, sequence_layers; initial
  values from `nn.init`).
- `nn.optim`: SGD/momentum, RMSprop, Adam, clipping; `nn.schedules`:
  learning-rate schedules.
- `nn.persist`: atomic .npz save/load of parameters and optimizer state.
- `nn.gradcheck`: numerical gradient checks.
"""
import os
import sys

# NumPy's OpenBLAS keeps its idle worker threads spinning for about 0.1 s
# after every matrix product. nn.conv runs elementwise work on threads of its
# own between products (depthwise convolutions), and spinning workers would
# take the cores those threads need: EfficientNet-Lite0's forward pass on 2
# cores took 1.14 s by default and 0.92 s with this (batch 32). It only takes
# effect when NumPy is not imported yet, and a value you set yourself wins.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")   # 2^4 cycles of spinning, then sleep

# On a busy machine, one BLAS thread per free core only (see nn/_threads.py);
# like the setting above, this only works before NumPy is imported.
if "numpy" not in sys.modules:
    from ._threads import choose_blas_threads
    choose_blas_threads()

from . import backend  # noqa: E402,F401
