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
both directions with margin 1).

The global term (config "global_weight" g > 0; off by default, not in the paper). The
fragment score cannot count: every word picks its best region on its own, so "a green
square above a green square" fits an image of ONE green square as well as its own
caption does, and with the sum twice as well. A whole-image vector and a whole-sentence
vector, compared once per pair, can see how many things there are:

    u_k = W_u mean_i(f_i) + b_u                (h,)   the image (pooled feature)
    q_l = W_q (hf_last + hb_first) + b_q       (h,)   the sentence: both ends of the BRNN
    S_kl = sum_t max_i v_i . s_t + g u_k . q_l

(a global image-sentence embedding as in Kiros et al. 2014 and Socher et al. 2014, added
to the fragment score in the spirit of Karpathy, Joulin & Fei-Fei 2014, who trained a
global and a fragment objective together). With "cosine" u and q are scaled unit vectors
like v and s. u sees the grid without the region dropout.

Cell positions (config "position_cells" = L > 0; off by default). A detection comes with
its box, a grid cell only with features, and a convolution's features are the same
wherever a pattern lies. The shapes set's small CNN appends each cell's (row, column)
to its features, but through W_m they add only a LINEAR function of the position to
v_i. A free learned vector per region (the L cells and the whole image) is added:

    v_i = W_m f_i + b_m + P_i                  P: (L + 1, h)

Config options change the score (see nn.ranking):
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
                  "cosine": 0.0, "hardest": False, "global_weight": 0.0, "position_cells": 0}


def _init_shapes(c):
    D, V, E, H = c["feature_dim"], c["vocab_size"], c["embed_dim"], c["hidden_dim"]
    shapes = {"W_m": (D, H), "b_m": (H,), "W_w": (V, E), "W_e": (E, H), "b_e": (H,),
              "W_f": (H, H), "b_f": (H,), "W_b": (H, H), "b_b": (H,), "W_d": (H, H), "b_d": (H,)}
    if c["position_cells"]:
        shapes["P"] = (int(c["position_cells"]) + 1, H)
    if c["global_weight"]:
        shapes.update({"W_u": (D, H), "b_u": (H,), "W_q": (H, H), "b_q": (H,)})
    return shapes


class AlignmentModel:
    """Parameters, forward and backward of the alignment model (see the module docstring).

    config: dict with feature_dim D, vocab_size V, embed_dim E, hidden_dim h, margin,
    dropout / word_dropout: the probability of dropping a region-feature / word-vector
    entry while training, the score options clip, average, cosine, global_weight,
    position_cells and the loss option hardest (module docstring).
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
            if name.startswith("b_") or name == "P":
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
        if self.config["position_cells"]:
            if v.shape[1] != self.params["P"].shape[0]:
                raise ValueError(f"the aligner has position vectors for {self.params['P'].shape[0] - 1} grid "
                                 f"cells, the features have {grid.shape[1]}")
            v = v + self.params["P"]
        v, c_unit = self._unit(v)
        return v, (cache, c_drop, c_unit)

    def image_vector_forward(self, grid):
        """grid (N, L, D) -> u (N, h), the whole-image vector of the global term."""
        u, cache = temporal_affine_forward(grid.mean(axis=1, keepdims=True), self.params["W_u"], self.params["b_u"])
        u, c_unit = self._unit(u[:, 0])
        return u, (cache, c_unit, grid.shape[1])

    def image_vector_backward(self, du, cache, need_dgrid=True):
        """du (N, h) -> d grid (N, L, D) (None unless need_dgrid); adds to grads W_u, b_u."""
        cache, c_unit, L = cache
        dpooled, dW, db = temporal_affine_backward(self._unit_backward(du, c_unit)[:, None], cache)
        self.grads["W_u"] += dW
        self.grads["b_u"] += db
        if not need_dgrid:
            return None
        return backend.get_array_module(dpooled).repeat(dpooled / L, L, axis=1)

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
        if self.config["position_cells"]:
            self.grads["P"] += dv.sum(axis=0)
        if not need_dgrid:
            return None
        dfragments = dropout_backward(temporal_affine_backward(dv, cache)[0], c_drop)
        L = dfragments.shape[1] - 1
        return dfragments[:, :L] + dfragments[:, L:] / L

    # ------------------------------------------------------------ sentence words
    def words_forward(self, words, mask):
        """words (M, T) int ids, mask (M, T) -> s (M, T, h), cache."""
        s, _, cache = self.sentences_forward(words, mask, need_q=False)
        return s, cache

    def words_backward(self, ds, cache):
        """ds (M, T, h) -> adds to the grads of every sentence parameter."""
        self.sentences_backward(ds, None, cache)

    def sentences_forward(self, words, mask, need_q=True):
        """words (M, T) int ids, mask (M, T) -> s (M, T, h), q (M, h) (None without the
        global term or need_q), cache."""
        p = self.params
        x, c_embed = word_embedding_forward(words, p["W_w"])
        x, c_drop = self._dropout(x, 1, "word_dropout")
        a, c_e = temporal_affine_forward(x, p["W_e"], p["b_e"])
        e, c_relu_e = relu_forward(a)
        hf, hb, c_rnn = birnn_relu_forward(e, mask, p["W_f"], p["b_f"], p["W_b"], p["b_b"])
        d, c_d = temporal_affine_forward(hf + hb, p["W_d"], p["b_d"])
        s, c_relu_s = relu_forward(d)
        s, c_unit = self._unit(s)
        q = c_q = None
        if need_q and self.config["global_weight"]:
            q, c_q = self._sentence_vector_forward(hf, hb, mask)
        return s, q, (c_embed, c_drop, c_e, c_relu_e, c_rnn, c_d, c_relu_s, c_unit, c_q)

    def _sentence_vector_forward(self, hf, hb, mask):
        """q (M, h) from the left-to-right state at the last word and the right-to-left
        state at the first: each has read the whole sentence."""
        xp = backend.get_array_module(hf)
        last = xp.asarray(mask).sum(axis=1).astype(xp.int64) - 1
        rows = xp.arange(hf.shape[0])
        q, cache = temporal_affine_forward((hf[rows, last] + hb[:, 0])[:, None], self.params["W_q"],
                                           self.params["b_q"])
        q, c_unit = self._unit(q[:, 0])
        return q, (cache, c_unit, rows, last)

    def sentences_backward(self, ds, dq, cache):
        """ds (M, T, h), dq (M, h) or None -> adds to the grads of every sentence parameter."""
        c_embed, c_drop, c_e, c_relu_e, c_rnn, c_d, c_relu_s, c_unit, c_q = cache
        ds = self._unit_backward(ds, c_unit)
        g = self.grads
        dh, dW, db = temporal_affine_backward(relu_backward(ds, c_relu_s), c_d)
        g["W_d"] += dW
        g["b_d"] += db
        dhf, dhb = dh, dh
        if dq is not None:
            cache_q, c_unit_q, rows, last = c_q
            dends, dW, db = temporal_affine_backward(self._unit_backward(dq, c_unit_q)[:, None], cache_q)
            g["W_q"] += dW
            g["b_q"] += db
            dhf, dhb = dh.copy(), dh.copy()
            dhf[rows, last] += dends[:, 0]
            dhb[:, 0] += dends[:, 0]
        de, dWf, dbf, dWb, dbb = birnn_relu_backward(dhf, dhb, c_rnn)
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
        s, q, c_words = self.sentences_forward(words, mask)
        S, c_score = fragment_score_forward(v, s, mask, **self.score_options())
        g = float(self.config["global_weight"])
        if g:
            u, c_image = self.image_vector_forward(grid)
            S = S + g * (u @ q.T)
        # Another image's caption that is word for word this image's caption (frequent in the
        # shapes set: "a red circle") is not a wrong pair: ranking it lower would be noise.
        same = (words[:, None, :] == words[None, :, :]).all(axis=2)
        hardest = bool(self.config["hardest"]) and not self.warming_up
        loss, c_rank = max_margin_ranking_forward(S, self.config["margin"], ignore=same, hardest=hardest)
        dS = max_margin_ranking_backward(c_rank)
        dv, ds = fragment_score_backward(dS, c_score)
        self.sentences_backward(ds, g * (dS.T @ u) if g else None, c_words)
        dgrid = self.regions_backward(dv, c_regions, need_dgrid)
        if g:
            dgrid_u = self.image_vector_backward(g * (dS @ q), c_image, need_dgrid)
            dgrid = dgrid + dgrid_u if need_dgrid else None
        return loss, dgrid
