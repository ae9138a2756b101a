"""Every op of `nn` in one namespace: `import nn.functional as F`.

Each op is a pair `*_forward(...) -> (out, cache)` and `*_backward(dout, cache)`
returning the gradients, as in Stanford's CS231n assignments. The math lives in
the modules grouped by concept; this file only gathers their names.
"""
from .dense import *  # noqa: F401,F403
from .conv import *  # noqa: F401,F403
from .pool import *  # noqa: F401,F403
from .normalization import *  # noqa: F401,F403
from .losses import *  # noqa: F401,F403
from .embedding import *  # noqa: F401,F403
from .recurrent import *  # noqa: F401,F403
from .attention import *  # noqa: F401,F403
from .bidirectional import *  # noqa: F401,F403
from .ranking import *  # noqa: F401,F403
