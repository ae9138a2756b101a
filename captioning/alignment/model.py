"""The alignment model of Karpathy & Fei-Fei (2015), on grid regions instead of detections.

Image fragments. The paper embeds the 19 best R-CNN detections and the whole image.
We have no detector: our regions are the cells of the CNN's feature grid (7 x 7 = 49
for EfficientNet-Lite0, 8 x 8 for the small CNN of the shapes set) plus the whole
image (the mean of the grid, i.e. the pooled feature). All R = L + 1 go through one
affine map into the h-dimensional multimodal space:

    v_i = W_m f_i + b_m                       f_i: (D,) CNN feature of region i

Sentence fragments: a bidirectional RNN over the words (f = ReLU):

    x_t = W_w[word_t]                          (E,)   word vector
    e_t = f(W_e x_t + b_e)                     (h,)
    hf_t = f(e_t + W_f hf_{t-1} + b_f),  hb_t = f(e_t + W_b hb_{t+1} + b_b)
    s_t = f(W_d (hf_t + hb_t) + b_d)           (h,)

Score and loss: nn.ranking (S_kl = sum_t max_i v_i . s_t, max-margin ranking loss in
both directions with margin 1). Config options change the score (see nn.ranking):
"clip" (max(0, .) of each word's best match, the paper's full objective), "average"
(mean over the words instead of the sum), "cosine" (a scale c > 0: v_i and s_t are
made unit vectors and the dot products multiplied by c). "hardest" changes the loss:
each true pair pays only for its hardest wrong pair in each direction (VSE++'s max of
hinges, Faghri et al. 2018) instead of the sum over all wrong pairs; while `warming_up`
is set (the trainer's first epochs) the sum is used.
"""
import numpy

from nn import backend
from nn.bidirectional import birnn_relu_backward, birnn_relu_forward
from nn.dense import dropout_backward, dropout_forward, relu_backward, relu_forward
from nn.ranking import (fragment_score_backward, fragment_score_forward, l2_normalize_backward,
                        l2_normalize_forward, max_margin_ranking_backward, max_margin_ranking_forward)
from nn.recurrent import (temporal_affine_backward, temporal_affine_forward, word_embedding_backward,
                          word_embedding_forward)

__all__ = ["AlignmentModel", "DEFAULT_CONFIG"]

DEFAULT_CONFIG = {"feature_dim": 1280, "vocab_size": 100, "embed_dim": 256, "hidden_dim": 512,
                  "margin": 1.0, "dropout": 0.0, "word_dropout": 0.0, "clip": False, "average": False,
                  "cosine": 0.0, "hardest": False}


def _init_shapes(c):
    D, V, E, H = c["feature_dim"], c["vocab_size"], c["embed_dim"], c["hidden_dim"]
    return {"W_m": (D, H), "b_m": (H,), "W_w": (V, E), "W_e": (E, H), "b_e": (H,),
            "W_f": (H, H), "b_f": (H,), "W_b": (H, H), "b_b": (H,), "W_d": (H, H), "b_d": (H,)}


class AlignmentModel:
    """Parameters, forward and backward of the alignment model (see the module docstring).

    config: dict with feature_dim D, vocab_size V, embed_dim E, hidden_dim h, margin,
    dropout / word_dropout: the probability of dropping a region-feature / word-vector
    entry while training, the score options clip, average, cosine and the loss option
    hardest (module docstring).
    `params` and `grads` map names to arrays; `named_parameters` is what nn.optim reads.
    `training` (train() / eval()) switches dropout; `dropout_seed` fixes its masks.
    """

    training = False
    dropout_seed = None
    warming_up = False          # True: the sum of hinges even when config["hardest"]

    def train(self):
        self.training = True
        return self

    def eval(self):
        self.training = False
        return self

    def _dropout(self, x, salt, key="dropout"):
        p = self.config[key]
        seed = None if self.dropout_seed is None else [self.dropout_seed, salt]
        return dropout_forward(x, {"p": p, "mode": "train" if self.training and p > 0 else "test",
                                   "seed": None if seed is None else int(numpy.random.SeedSequence(seed)
                                                                         .generate_state(1)[0])})

    def __init__(self, config, seed=0, dtype=None):
        self.config = {**DEFAULT_CONFIG, **config}
        self.dtype = numpy.dtype(dtype or backend.default_float())
        gen = numpy.random.default_rng(seed)
        self.params = {}
        for name, shape in _init_shapes(self.config).items():
            if name.startswith("b_"):
                value = numpy.zeros(shape)
            elif name == "W_w":
                value = gen.standard_normal(shape) * 0.1
            elif name in ("W_f", "W_b"):    # spectral radius about 0.5: the ReLU recurrence stays tame
                value = gen.standard_normal(shape) * 0.5 / numpy.sqrt(shape[0])
            else:
                value = gen.standard_normal(shape) / numpy.sqrt(shape[0])
            self.params[name] = backend.asarray(value, dtype=self.dtype)
        self.grads = {name: backend.xp().zeros_like(p) for name, p in self.params.items()}

    # ------------------------------------------------------------ parameters
    def named_parameters(self, prefix="model"):
        for name, param in self.params.items():
            yield f"{prefix}.{name}", param, self.grads[name]

    def state_dict(self):
        return {name: backend.to_numpy(p) for name, p in self.params.items()}

    def load_state_dict(self, state):
        missing = sorted(set(self.params) - set(state))
        wrong = [n for n in self.params if n in state and tuple(state[n].shape) != tuple(self.params[n].shape)]
        if missing or wrong:
            raise ValueError(f"alignment model weights do not fit: missing {missing}, wrong shape {wrong}")
        for name in self.params:
            self.params[name][...] = backend.asarray(state[name], dtype=self.dtype)

    def _unit(self, x):
        """With config["cosine"] = c > 0: sqrt(c) x / |x| (so that v . s = c cos); else x."""
        if not self.config["cosine"]:
            return x, None
        y, cache = l2_normalize_forward(x)
        return y * float(numpy.sqrt(self.config["cosine"])), cache

    def _unit_backward(self, dy, cache):
        if cache is None:
            return dy
        return l2_normalize_backward(dy * float(numpy.sqrt(self.config["cosine"])), cache)

    def score_options(self):
        """The keyword arguments of nn.ranking.fragment_score_forward for this model."""
        return {"clip": bool(self.config["clip"]), "average": bool(self.config["average"])}

    # ------------------------------------------------------------ image regions
    def regions_forward(self, grid):
        """grid (N, L, D) CNN features -> v (N, L + 1, h): the L cells, then the whole image."""
        xp = backend.get_array_module(grid)
        fragments = xp.concatenate([grid, grid.mean(axis=1, keepdims=True)], axis=1)
        dropped, c_drop = self._dropout(fragments, 0)
        v, cache = temporal_affine_forward(dropped, self.params["W_m"], self.params["b_m"])
        v, c_unit = self._unit(v)
        return v, (cache, c_drop, c_unit)

    def regions_backward(self, dv, cache, need_dgrid=True):
        """dv (N, L + 1, h) -> d grid (N, L, D) (None unless need_dgrid); adds to grads W_m, b_m."""
        cache, c_drop, c_unit = cache
        dv = self._unit_backward(dv, c_unit)
        fragments, W_m = cache
        H = W_m.shape[1]
        # d W_m = fragments^T dv, as temporal_affine_backward computes it; d fragments only on
        # demand: for frozen features it would be the largest product of the step.
        self.grads["W_m"] += fragments.reshape(-1, fragments.shape[2]).T @ dv.reshape(-1, H)
        self.grads["b_m"] += dv.sum(axis=(0, 1))
        if not need_dgrid:
            return None
        dfragments = dropout_backward(temporal_affine_backward(dv, cache)[0], c_drop)
        L = dfragments.shape[1] - 1
        return dfragments[:, :L] + dfragments[:, L:] / L

    # ------------------------------------------------------------ sentence words
    def words_forward(self, words, mask):
        """words (M, T) int ids, mask (M, T) -> s (M, T, h), cache."""
        p = self.params
        x, c_embed = word_embedding_forward(words, p["W_w"])
        x, c_drop = self._dropout(x, 1, "word_dropout")
        a, c_e = temporal_affine_forward(x, p["W_e"], p["b_e"])
        e, c_relu_e = relu_forward(a)
        hf, hb, c_rnn = birnn_relu_forward(e, mask, p["W_f"], p["b_f"], p["W_b"], p["b_b"])
        d, c_d = temporal_affine_forward(hf + hb, p["W_d"], p["b_d"])
        s, c_relu_s = relu_forward(d)
        s, c_unit = self._unit(s)
        return s, (c_embed, c_drop, c_e, c_relu_e, c_rnn, c_d, c_relu_s, c_unit)

    def words_backward(self, ds, cache):
        """ds (M, T, h) -> adds to the grads of every sentence parameter."""
        c_embed, c_drop, c_e, c_relu_e, c_rnn, c_d, c_relu_s, c_unit = cache
        ds = self._unit_backward(ds, c_unit)
        g = self.grads
        dh, dW, db = temporal_affine_backward(relu_backward(ds, c_relu_s), c_d)
        g["W_d"] += dW
        g["b_d"] += db
        de, dWf, dbf, dWb, dbb = birnn_relu_backward(dh, dh, c_rnn)
        for name, value in (("W_f", dWf), ("b_f", dbf), ("W_b", dWb), ("b_b", dbb)):
            g[name] += value
        dx, dW, db = temporal_affine_backward(relu_backward(de, c_relu_e), c_e)
        g["W_e"] += dW
        g["b_e"] += db
        g["W_w"] += word_embedding_backward(dropout_backward(dx, c_drop), c_embed)

    # ------------------------------------------------------------ loss
    def loss(self, grid, words, mask, need_dgrid=True):
        """Ranking loss of N true pairs (image k with sentence k); fills self.grads.

        Inputs: grid (N, L, D), words (N, T) ids, mask (N, T).
        Returns: (loss, dgrid) with dgrid (N, L, D) for a trainable encoder (None when
        need_dgrid is False: frozen features).
        """
        for grad in self.grads.values():
            grad[...] = 0
        v, c_regions = self.regions_forward(grid)
        s, c_words = self.words_forward(words, mask)
        S, c_score = fragment_score_forward(v, s, mask, **self.score_options())
        # Another image's caption that is word for word this image's caption (frequent in the
        # shapes set: "a red circle") is not a wrong pair: ranking it lower would be noise.
        same = (words[:, None, :] == words[None, :, :]).all(axis=2)
        hardest = bool(self.config["hardest"]) and not self.warming_up
        loss, c_rank = max_margin_ranking_forward(S, self.config["margin"], ignore=same, hardest=hardest)
        dv, ds = fragment_score_backward(max_margin_ranking_backward(c_rank), c_score)
        self.words_backward(ds, c_words)
        return loss, self.regions_backward(dv, c_regions, need_dgrid)
