"""nn: neural-network layers written by hand, forward and backward, on NumPy or CuPy.

- `nn.backend`: the one NumPy/CuPy switch and array helpers.
- `nn.functional`: every op as a CS231n-style pair `*_forward -> (out, cache)`,
  `*_backward(dout, cache) -> grads` (grouped in dense, conv, pool,
  normalization, losses, recurrent, attention).
- `nn.layers`: thin classes holding `params` and `grads` for building models.
- `nn.optim`: SGD/momentum, RMSprop, Adam, clipping, learning-rate schedules.
- `nn.persist`: atomic .npz save/load of parameters and optimizer state.
- `nn.gradcheck`: numerical gradient checks.
"""
from . import backend  # noqa: F401
