"""Show, Attend and Tell (Xu et al. 2015), soft attention, with backprop through time by hand.

Inputs per image: a grid of L feature vectors a_1..a_L (D each; 7 x 7 x 1280
from EfficientNet-Lite0 gives L = 49, D = 1280).

    mean = (1/L) sum_i a_i
    h_0 = tanh(mean @ W_h0 + b_h0),  c_0 = tanh(mean @ W_c0 + b_c0)
    P = a @ W_att_feat + b_att                   (N, L, A) once per batch, not per step
    for t = 1..T:
        e_ti   = w_att . tanh(P_i + h_{t-1} @ W_att_h)     attention scores (N, L)
        alpha_t = softmax_i(e_t)                            where to look (N, L)
        z_t    = sum_i alpha_ti a_i                        context (N, D)
        beta_t = sigmoid(h_{t-1} @ W_beta + b_beta)        gate: how much to look (N, 1)
        h_t, c_t = LSTM([W_embed[word_{t-1}]; beta_t z_t], h_{t-1}, c_{t-1})
    scores_t = dropout(h_t) @ W_out + b_out                 (N, T, V)
    loss = masked softmax loss / N + lambda / N * sum_{n,i} (1 - sum_t m_nt alpha_nti)^2

The last term is the paper's "doubly stochastic" regulariser: it pushes each
location's total attention over the caption, sum_t alpha_ti, towards 1. With
fewer steps than locations (T < L) that cannot be met, since the totals add
up to T; in effect it spreads attention over the image ("pay equal attention
to every part of the image over the course of generation", Xu et al.).
m_nt masks padding steps.

Simplification (say so): the output layer reads h_t only. The paper's "deep
output" also adds projections of the context and the previous word; reading
h alone keeps the backward pass short and costs little accuracy here.

Speed: the feature projection P is one big GEMM per batch; the word
embeddings for all T steps are looked up at once and written into one
preallocated LSTM-input buffer; the output layer is one (N*T, H) x (H, V)
GEMM after the loop. Only what truly depends on h_{t-1} runs per step.
"""
from nn import backend
from nn import functional as F

from .base import CaptionModel

from nn.attention import attention_project_backward, attention_project_forward, attention_step_forward
from nn.losses import log_softmax, temporal_softmax_loss
from nn.recurrent import (lstm_step_backward_from_projection,
                          lstm_step_forward_from_projection, temporal_affine_backward,
                          temporal_affine_forward, word_embedding_backward,
                          word_embedding_forward)

__all__ = ["ShowAttendTell", "attention_step_backward_summed"]


# ------------------------------------------------------------------ attention backward, summed over steps

def attention_step_backward_summed(dcontext, dalpha, cache):
    """`nn.attention.attention_step_backward` for a decoder that sums over time steps itself.

    Same inputs (cache from `nn.attention.attention_step_forward`) and the
    same dprojected, dh, dW_hidden, dw_score, but WITHOUT the per-step
    dfeatures = alpha dcontext^T (an (N, L, D) array every step): the caller
    gets d features through the contexts of all T steps with ONE batched
    product, alphas^T @ dcontexts, at the end. At N=64, L=49, D=1280 this
    step is about 4x faster than the general one.

    Inputs:
    - dcontext: (N, D) gradient of the context
    - dalpha: (N, L) gradient reaching alpha directly (regulariser), or None
    - cache: from attention_step_forward
    Returns: dprojected (N, L, A), dh (N, H), dW_hidden (H, A), dw_score (A,)
    """
    features, h, W_hidden, w_score, activations, alpha = cache
    xp = backend.get_array_module(dcontext, alpha, op="attention_step_backward_summed")
    dalpha_total = (features @ dcontext[:, :, None])[:, :, 0]          # (N, L)
    if dalpha is not None:
        dalpha_total += dalpha
    # softmax backward: dscores = alpha * (dalpha - sum_l alpha_l dalpha_l)
    dscores = alpha * (dalpha_total - (alpha * dalpha_total).sum(axis=1, keepdims=True))
    dw_score = xp.einsum("nla,nl->a", activations, dscores)
    # through tanh and the scoring vector: dprojected = (1 - act^2) * dscores * w_score
    dprojected = activations * activations
    xp.subtract(1, dprojected, out=dprojected)
    dprojected *= dscores[:, :, None]
    dprojected *= w_score
    dhidden = dprojected.sum(axis=1)                                  # (N, A)
    return dprojected, dhidden @ W_hidden.T, h.T @ dhidden, dw_score


# ------------------------------------------------------------------ the model

class ShowAttendTell(CaptionModel):
    """Soft-attention captioner over a feature grid (N, L, D).

    config keys: vocab_size V, feature_dim D, wordvec_dim E, hidden_dim H,
    attention_dim A, dropout (before the output layer), doubly_stochastic
    (lambda of the regulariser), null_id/start_id/end_id.
    """
    name = "attention"
    feature_kind = "grid"

    def __init__(self, config, seed=0, dtype=None):
        config = {"wordvec_dim": 256, "hidden_dim": 512, "attention_dim": 256, "dropout": 0.0,
                  "doubly_stochastic": 1.0, **config, "model": self.name}
        super().__init__(config)
        self._check_config(("vocab_size", "feature_dim", "wordvec_dim", "hidden_dim", "attention_dim"))
        V, D = config["vocab_size"], config["feature_dim"]
        E, H, A = config["wordvec_dim"], config["hidden_dim"], config["attention_dim"]
        self._init_params({
            "W_h0": ((D, H), "weight"), "b_h0": ((H,), "zeros"),
            "W_c0": ((D, H), "weight"), "b_c0": ((H,), "zeros"),
            "W_att_feat": ((D, A), "weight"), "b_att": ((A,), "zeros"),
            "W_att_h": ((H, A), "weight"), "w_att": ((A, 1), "weight"),
            "W_beta": ((H, 1), "weight"), "b_beta": ((1,), "zeros"),
            "W_embed": ((V, E), "embedding"),
            "Wx": ((E + D, 4 * H), "weight"), "Wh": ((H, 4 * H), "weight"), "b": ((4 * H,), "zeros"),
            "W_out": ((H, V), "weight"), "b_out": ((V,), "zeros"),
        }, seed, dtype)
        self.params["w_att"] = self.params["w_att"].reshape(A)
        self.params["b"][H:2 * H] = 1.0  # forget-gate bias 1

    # ---------------------------------------------------------- pieces shared by training and decoding
    def _initial_state(self, features):
        """h0, c0 from the mean feature, and the per-batch feature projection P."""
        p = self.params
        N, L, D = features.shape
        mean = features.mean(axis=1)
        h0_pre, h0_cache = F.affine_forward(mean, p["W_h0"], p["b_h0"])
        c0_pre, c0_cache = F.affine_forward(mean, p["W_c0"], p["b_c0"])
        h0, h0_tanh = F.tanh_forward(h0_pre)
        c0, c0_tanh = F.tanh_forward(c0_pre)
        feat_proj, proj_cache = attention_project_forward(features, p["W_att_feat"], p["b_att"])
        return h0, c0, feat_proj, (h0_cache, c0_cache, h0_tanh, c0_tanh, proj_cache)

    def _gate(self, h):
        """beta = sigmoid(h @ W_beta + b_beta), (N, 1)."""
        return F.sigmoid(h @ self.params["W_beta"] + self.params["b_beta"])

    # ---------------------------------------------------------- training
    def forward_backward(self, features, captions, feature_grad=False, dropout_seed=None):
        """Teacher-forced loss (with the attention regulariser) and all gradients.

        Inputs:
        - features: (N, L, D) feature grids
        - captions: (N, T+1) int word ids, <START> first, <NULL>-padded
        - feature_grad: also return d loss / d features (trainable encoder)
        - dropout_seed: seed of the dropout mask (training mode only)
        Returns:
        - loss: float
        - grads: dict name -> array, same shapes as self.params
        - dfeatures: (N, L, D) or None
        """
        self._check_inputs(features, captions)
        xp = backend.get_array_module(features, op="ShowAttendTell.forward_backward")
        p = self.params
        N, L, D = features.shape
        E, H = self.config["wordvec_dim"], self.config["hidden_dim"]
        captions_in, captions_out, mask = self._split_captions(captions)
        T = captions_in.shape[1]
        dtype = features.dtype

        # ---------------- forward
        # The LSTM input is [word; gated context] and its weights Wx (E + D, 4H)
        # split the same way: the word part of all T steps is ONE matrix
        # product up front; only the context part must wait for h_{t-1}.
        Wx_word, Wx_context = p["Wx"][:E], p["Wx"][E:]
        h, c, feat_proj, init_caches = self._initial_state(features)
        words, embed_cache = word_embedding_forward(captions_in, p["W_embed"])
        words_tm = xp.ascontiguousarray(words.transpose(1, 0, 2)).reshape(T * N, E)   # time-major
        word_proj = (words_tm @ Wx_word + p["b"]).reshape(T, N, 4 * H)
        gated_contexts = xp.empty((T, N, D), dtype=dtype)
        hidden = xp.empty((N, T, H), dtype=dtype)
        alphas = xp.empty((N, T, L), dtype=dtype)
        step_caches = []
        for t in range(T):
            context, alpha, att_cache = attention_step_forward(features, feat_proj, h, p["W_att_h"], p["w_att"])
            beta = self._gate(h)
            xp.multiply(beta, context, out=gated_contexts[t])
            h_prev = h
            word_proj[t] += gated_contexts[t] @ Wx_context
            h, c, lstm_cache = lstm_step_forward_from_projection(word_proj[t], h, c, p["Wh"])
            hidden[:, t] = h
            alphas[:, t] = alpha
            step_caches.append((att_cache, context, beta, h_prev, lstm_cache))
        dropped, drop_cache = F.dropout_forward(hidden, self._dropout_param(dropout_seed))
        scores, out_cache = temporal_affine_forward(dropped, p["W_out"], p["b_out"])
        word_loss, dscores = temporal_softmax_loss(scores, captions_out, mask)

        # doubly stochastic regulariser over the real (unmasked) steps
        lam = float(self.config["doubly_stochastic"])
        step_mask = mask.astype(dtype)[:, :, None]                       # (N, T, 1)
        shortfall = 1 - (alphas * step_mask).sum(axis=1)                  # (N, L)
        reg_loss = lam * float((shortfall * shortfall).sum()) / N
        dalphas = (-2 * lam / N) * shortfall[:, None, :] * step_mask      # (N, T, L)

        # ---------------- backward through time
        g = {name: xp.zeros_like(value) for name, value in p.items()}
        ddropped, g["W_out"], g["b_out"] = temporal_affine_backward(dscores, out_cache)
        dhidden = F.dropout_backward(ddropped, drop_cache)
        dgates = xp.empty((T, N, 4 * H), dtype=dtype)     # d(LSTM pre-activations) of every step
        dfeat_proj = xp.zeros_like(feat_proj)
        dcontexts = xp.empty((N, T, D), dtype=dtype) if feature_grad else None
        dh_next = xp.zeros((N, H), dtype=dtype)
        dc_next = xp.zeros((N, H), dtype=dtype)
        for t in reversed(range(T)):
            att_cache, context, beta, h_prev, lstm_cache = step_caches[t]
            dgates[t], dh_prev, dc_next, dWh = lstm_step_backward_from_projection(
                dhidden[:, t] + dh_next, dc_next, lstm_cache)
            g["Wh"] += dWh
            dgated = dgates[t] @ Wx_context.T                             # d(beta * context), (N, D)
            dcontext = dgated * beta
            # gate: beta = sigmoid(h_prev @ W_beta + b_beta)
            dbeta_pre = (dgated * context).sum(axis=1, keepdims=True) * beta * (1 - beta)
            g["W_beta"] += h_prev.T @ dbeta_pre
            g["b_beta"] += dbeta_pre.sum(axis=0)
            dh_prev += dbeta_pre @ p["W_beta"].T
            # attention
            dproj_t, dh_att, dW_att_h, dw_att = attention_step_backward_summed(dcontext, dalphas[:, t],
                                                                               att_cache)
            dfeat_proj += dproj_t
            g["W_att_h"] += dW_att_h
            g["w_att"] += dw_att
            dh_prev += dh_att
            if feature_grad:
                dcontexts[:, t] = dcontext
            dh_next = dh_prev

        # the LSTM input weights, the biases and the words: one large product each
        dgates_flat = dgates.reshape(T * N, 4 * H)
        g["Wx"][:E] = words_tm.T @ dgates_flat
        g["Wx"][E:] = gated_contexts.reshape(T * N, D).T @ dgates_flat
        g["b"] = dgates_flat.sum(axis=0)
        dwords = (dgates_flat @ Wx_word.T).reshape(T, N, E).transpose(1, 0, 2)
        g["W_embed"] = word_embedding_backward(dwords, embed_cache)

        # initial state and the feature projection
        h0_cache, c0_cache, h0_tanh, c0_tanh, proj_cache = init_caches
        dmean_h, g["W_h0"], g["b_h0"] = F.affine_backward(F.tanh_backward(dh_next, h0_tanh), h0_cache)
        dmean_c, g["W_c0"], g["b_c0"] = F.affine_backward(F.tanh_backward(dc_next, c0_tanh), c0_cache)
        dfeatures = None
        if feature_grad:
            dfeatures, g["W_att_feat"], g["b_att"] = attention_project_backward(dfeat_proj, proj_cache)
            dfeatures += alphas.transpose(0, 2, 1) @ dcontexts            # all steps' contexts at once
            dfeatures += ((dmean_h + dmean_c) / L)[:, None, :]
        else:  # frozen features: the weight gradients only, skipping an (N*L, A) x (A, D) product
            dfeat_proj_flat = dfeat_proj.reshape(N * L, -1)
            g["W_att_feat"] = features.reshape(N * L, D).T @ dfeat_proj_flat
            g["b_att"] = dfeat_proj_flat.sum(axis=0)
        self.grads = g
        return float(word_loss) + reg_loss, g, dfeatures

    # ---------------------------------------------------------- decoding
    def init_decode_state(self, features):
        """State before the first word: h, c (N, H), features (N, L, D), feat_proj (N, L, A)."""
        self._check_inputs(features)
        h0, c0, feat_proj, _ = self._initial_state(features)
        return {"h": h0, "c": c0, "features": features, "feat_proj": feat_proj}

    def decode_step(self, words, state):
        """One step: previous words (N,) -> (log_probs (N, V), new state, attention (N, L))."""
        p = self.params
        xp = backend.get_array_module(state["h"], op="ShowAttendTell.decode_step")
        h, c = state["h"], state["c"]
        context, alpha, _ = attention_step_forward(state["features"], state["feat_proj"], h,
                                                   p["W_att_h"], p["w_att"])
        x = xp.concatenate([p["W_embed"][words], self._gate(h) * context], axis=1)
        # The fast step (in-place gate work; one fused kernel on CuPy), same math as lstm_step_forward.
        h, c, _ = lstm_step_forward_from_projection(x @ p["Wx"] + p["b"], h, c, p["Wh"])
        scores = h @ p["W_out"] + p["b_out"]
        new_state = dict(state, h=h, c=c)
        return log_softmax(scores), new_state, alpha
