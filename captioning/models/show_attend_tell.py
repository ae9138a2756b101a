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

Speed: the feature projection P is one big GEMM per batch; the word part
of the LSTM input projection, W_embed[word] @ Wx_word + b, is one GEMM for
all T steps; the output layer is one (N*T, H) x (H, V) GEMM after the loop.
Only what truly depends on h_{t-1} runs per step (`_step_forward`,
`_step_backward`, laid out like `nn.recurrent.lstm_step_forward/backward`).
In the backward pass the step leaves out the features' gradient through the
context (`with_dfeatures=False`, an (N, L, D) array per step, half the
step's time at N=64, L=49, D=1280): `_backward_inputs` gets it for all
steps at once, alphas^T @ dcontexts.
"""
from nn import backend
from nn import functional as F
from nn.attention import (attention_gate_backward, attention_gate_forward, attention_project_backward,
                          attention_project_forward, attention_step_backward, attention_step_forward)
from nn.dense import temporal_affine_backward, temporal_affine_forward
from nn.embedding import word_embedding_backward, word_embedding_forward
from nn.losses import log_softmax
from nn.recurrent import lstm_step_backward_from_projection, lstm_step_forward_from_projection

from .base import CaptionModel

__all__ = ["ShowAttendTell"]


# ------------------------------------------------------------------ the model

class ShowAttendTell(CaptionModel):
    """Soft-attention captioner over a feature grid (N, L, D).

    config keys: vocab_size V, feature_dim D, wordvec_dim E, hidden_dim H,
    attention_dim A, dropout (before the output layer), doubly_stochastic
    (lambda of the regulariser), null_id/start_id/end_id.
    """
    name = "attention"
    feature_kind = "grid"
    title = "Show, Attend and Tell, soft attention over a feature grid"
    config_keys = ("wordvec_dim", "hidden_dim", "attention_dim", "dropout", "doubly_stochastic")   # set by the train options (commands/train.py)

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

    # ---------------------------------------------------------- training
    def forward_backward(self, features, captions, feature_grad=False, dropout_seed=None,
                         token_weights=None):
        """Teacher-forced loss (with the attention regulariser) and all gradients.

        Inputs:
        - features: (N, L, D) feature grids
        - captions: (N, T+1) int word ids, <START> first, <NULL>-padded
        - feature_grad: also return d loss / d features (trainable encoder)
        - dropout_seed: seed of the dropout mask (training mode only)
        - token_weights: None, or (N, T) weights of the target words' losses
          instead of the padding mask (self-critical training; CaptionModel._word_loss);
          the attention regulariser is then left out (the loss is a policy-gradient surrogate)
        Returns:
        - loss: float
        - grads: dict name -> array, same shapes as self.params
        - dfeatures: (N, L, D) or None
        """
        self._check_inputs(features, captions)
        captions_in, captions_out, mask = self._split_captions(captions)
        scores, alphas, cache = self._forward(features, captions_in, dropout_seed)
        word_loss, dscores = self._word_loss(scores, captions_out, mask, token_weights)
        if token_weights is None:
            reg_loss, dalphas = self._attention_regulariser(alphas, mask)
        else:   # a policy gradient: the regulariser is no part of the expected reward
            reg_loss, dalphas = 0.0, backend.get_array_module(alphas).zeros_like(alphas)
        grads, dfeatures = self._backward(dscores, dalphas, cache, feature_grad)
        self.grads = grads
        return float(word_loss) + reg_loss, grads, dfeatures

    def _forward(self, features, captions_in, dropout_seed):
        """Teacher-forced forward pass: scores (N, T, V), alphas (N, T, L), cache for `_backward`."""
        xp = backend.get_array_module(features, op="ShowAttendTell.forward_backward")
        p = self.params
        N, L, D = features.shape
        T = captions_in.shape[1]
        E, H = self.config["wordvec_dim"], self.config["hidden_dim"]
        # The LSTM input is [word; gated context] and its weights Wx (E + D, 4H)
        # split the same way: the word part of all T steps is ONE matrix
        # product up front; only the context part must wait for h_{t-1}.
        h, c, feat_proj, init_cache = self._initial_state(features)
        words, embed_cache = word_embedding_forward(captions_in, p["W_embed"])
        words_tm = xp.ascontiguousarray(words.transpose(1, 0, 2)).reshape(T * N, E)   # time-major
        word_proj = (words_tm @ p["Wx"][:E] + p["b"]).reshape(T, N, 4 * H)
        gated_contexts = xp.empty((T, N, D), dtype=features.dtype)
        hidden = xp.empty((N, T, H), dtype=features.dtype)
        alphas = xp.empty((N, T, L), dtype=features.dtype)
        step_caches = []
        for t in range(T):
            h, c, alpha, step_cache = self._step_forward(features, feat_proj, h, c, word_proj[t],
                                                         gated_contexts[t])
            hidden[:, t] = h
            alphas[:, t] = alpha
            step_caches.append(step_cache)
        dropped, drop_cache = F.dropout_forward(hidden, self._dropout_param(dropout_seed))
        scores, out_cache = temporal_affine_forward(dropped, p["W_out"], p["b_out"])
        cache = {"features": features, "initial": init_cache, "feat_proj": feat_proj, "words_tm": words_tm,
                 "embed": embed_cache, "gated_contexts": gated_contexts, "alphas": alphas,
                 "steps": step_caches, "dropout": drop_cache, "output": out_cache}
        return scores, alphas, cache

    def _step_forward(self, features, feat_proj, prev_h, prev_c, xw, gated_context):
        """One decoder step: attend, gate the context, one LSTM step.

        Inputs:
        - features: (N, L, D); feat_proj: (N, L, A) from `_initial_state`
        - prev_h, prev_c: (N, H) state after the previous word
        - xw: (N, 4H) the word part of the LSTM input projection (with b);
          the context part is added to it in place
        - gated_context: (N, D) buffer, receives beta * context (the LSTM input's context part)
        Returns a tuple of:
        - next_h, next_c: (N, H)
        - alpha: (N, L) attention weights
        - cache: for `_step_backward`
        """
        p = self.params
        context, alpha, att_cache = attention_step_forward(features, feat_proj, prev_h, p["W_att_h"],
                                                           p["w_att"])
        _, gate_cache = attention_gate_forward(context, prev_h, p["W_beta"], p["b_beta"], out=gated_context)
        xw += gated_context @ p["Wx"][self.config["wordvec_dim"]:]
        next_h, next_c, lstm_cache = lstm_step_forward_from_projection(xw, prev_h, prev_c, p["Wh"])
        return next_h, next_c, alpha, (att_cache, gate_cache, lstm_cache)

    def _regulariser_loss(self, forward_outputs, mask):
        """The doubly stochastic term of the loss (for `forward_loss`); forward_outputs: `_forward`'s."""
        return self._attention_regulariser(forward_outputs[1], mask)[0]

    def _attention_regulariser(self, alphas, mask):
        """Doubly stochastic loss over the real (unmasked) steps and its gradient dalphas (N, T, L)."""
        N = alphas.shape[0]
        lam = float(self.config["doubly_stochastic"])
        step_mask = mask.astype(alphas.dtype)[:, :, None]                # (N, T, 1)
        shortfall = 1 - (alphas * step_mask).sum(axis=1)                  # (N, L)
        reg_loss = lam * float((shortfall * shortfall).sum()) / N
        dalphas = (-2 * lam / N) * shortfall[:, None, :] * step_mask      # (N, T, L)
        return reg_loss, dalphas

    def _backward(self, dscores, dalphas, cache, feature_grad):
        """Backward pass of `_forward`: (grads, dfeatures or None)."""
        xp = backend.get_array_module(dscores)
        grads = {name: xp.zeros_like(value) for name, value in self.params.items()}
        ddropped, grads["W_out"], grads["b_out"] = temporal_affine_backward(dscores, cache["output"])
        dhidden = F.dropout_backward(ddropped, cache["dropout"])
        through_time = self._backward_through_time(dhidden, dalphas, cache, grads, feature_grad)
        dfeatures = self._backward_inputs(through_time, cache, grads, feature_grad)
        return grads, dfeatures

    def _backward_through_time(self, dhidden, dalphas, cache, grads, feature_grad):
        """The steps in reverse; adds the per-step weights' gradients into grads.

        Returns d(LSTM pre-activations) of every step (T, N, 4H), d feat_proj
        (N, L, A), dcontexts (N, T, D) (None unless feature_grad), and the
        gradients of h_0 and c_0.
        """
        xp = backend.get_array_module(dhidden)
        N, T, H = dhidden.shape
        D = cache["features"].shape[2]
        dgates = xp.empty((T, N, 4 * H), dtype=dhidden.dtype)    # d(LSTM pre-activations) of every step
        dfeat_proj = xp.zeros_like(cache["feat_proj"])
        dcontexts = xp.empty((N, T, D), dtype=dhidden.dtype) if feature_grad else None
        dh = xp.zeros((N, H), dtype=dhidden.dtype)
        dc = xp.zeros((N, H), dtype=dhidden.dtype)
        for t in reversed(range(T)):
            dgates[t], dh, dc, dcontext, dproj = self._step_backward(dhidden[:, t] + dh, dc, dalphas[:, t],
                                                                    cache["steps"][t], grads)
            dfeat_proj += dproj
            if feature_grad:
                dcontexts[:, t] = dcontext
        return dgates, dfeat_proj, dcontexts, dh, dc

    def _step_backward(self, dnext_h, dnext_c, dalpha, cache, grads):
        """Backward pass of `_step_forward`; adds Wh, W_beta, b_beta, W_att_h, w_att gradients into grads.

        Inputs:
        - dnext_h, dnext_c: (N, H) gradients of the step's new state
        - dalpha: (N, L) gradient reaching alpha directly (the regulariser)
        - cache: from `_step_forward`
        Returns a tuple of:
        - dxw: (N, 4H) gradient of the LSTM pre-activations (input projection)
        - dprev_h, dprev_c: (N, H)
        - dcontext: (N, D) gradient of the (ungated) context
        - dfeat_proj: (N, L, A) this step's share of d feat_proj
        """
        p = self.params
        att_cache, gate_cache, lstm_cache = cache
        dxw, dprev_h, dprev_c, dWh = lstm_step_backward_from_projection(dnext_h, dnext_c, lstm_cache)
        grads["Wh"] += dWh
        dgated = dxw @ p["Wx"][self.config["wordvec_dim"]:].T             # d(beta * context), (N, D)
        dcontext, dh_gate, dW_beta, db_beta = attention_gate_backward(dgated, gate_cache)
        grads["W_beta"] += dW_beta
        grads["b_beta"] += db_beta
        dprev_h += dh_gate
        _, dfeat_proj, dh_att, dW_att_h, dw_att = attention_step_backward(dcontext, dalpha, att_cache,
                                                                         with_dfeatures=False)
        grads["W_att_h"] += dW_att_h
        grads["w_att"] += dw_att
        dprev_h += dh_att
        return dxw, dprev_h, dprev_c, dcontext, dfeat_proj

    def _backward_inputs(self, through_time, cache, grads, feature_grad):
        """Gradients of the LSTM input weights, the words, the initial state and the projection.

        One large product each, over all steps. Returns dfeatures (N, L, D) or None.
        """
        features, words_tm = cache["features"], cache["words_tm"]
        h0_cache, c0_cache, h0_tanh, c0_tanh, proj_cache = cache["initial"]
        dgates, dfeat_proj, dcontexts, dh0, dc0 = through_time
        N, L, D = features.shape
        T, E = dgates.shape[0], words_tm.shape[1]
        dgates_flat = dgates.reshape(T * N, -1)
        grads["Wx"][:E] = words_tm.T @ dgates_flat
        grads["Wx"][E:] = cache["gated_contexts"].reshape(T * N, D).T @ dgates_flat
        grads["b"] = dgates_flat.sum(axis=0)
        dwords = (dgates_flat @ self.params["Wx"][:E].T).reshape(T, N, E).transpose(1, 0, 2)
        grads["W_embed"] = word_embedding_backward(dwords, cache["embed"])
        dmean_h, grads["W_h0"], grads["b_h0"] = F.affine_backward(F.tanh_backward(dh0, h0_tanh), h0_cache)
        dmean_c, grads["W_c0"], grads["b_c0"] = F.affine_backward(F.tanh_backward(dc0, c0_tanh), c0_cache)
        if not feature_grad:   # frozen features: weight gradients only, no (N*L, A) x (A, D) product
            dfeat_proj_flat = dfeat_proj.reshape(N * L, -1)
            grads["W_att_feat"] = features.reshape(N * L, D).T @ dfeat_proj_flat
            grads["b_att"] = dfeat_proj_flat.sum(axis=0)
            return None
        dfeatures, grads["W_att_feat"], grads["b_att"] = attention_project_backward(dfeat_proj, proj_cache)
        dfeatures += cache["alphas"].transpose(0, 2, 1) @ dcontexts            # all steps' contexts at once
        dfeatures += ((dmean_h + dmean_c) / L)[:, None, :]
        return dfeatures

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
        gated, _ = attention_gate_forward(context, h, p["W_beta"], p["b_beta"])
        x = xp.concatenate([p["W_embed"][words], gated], axis=1)
        # The fast step (in-place gate work; one fused kernel on CuPy), same math as lstm_step_forward.
        h, c, _ = lstm_step_forward_from_projection(x @ p["Wx"] + p["b"], h, c, p["Wh"])
        scores = h @ p["W_out"] + p["b_out"]
        new_state = dict(state, h=h, c=c)
        return log_softmax(scores), new_state, alpha
