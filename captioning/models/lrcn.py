"""LRCN, factored (Donahue et al. 2015, "Long-term Recurrent Convolutional Networks"): two LSTMs.

The first layer is a language model that never sees the image; the second
sees the first layer's output and the image at every step:

    img = feature @ W_img + b_img                     (N, E)    the pooled vector, projected once
    x_t = W_embed[word_t]                             (N, T, E) teacher forcing
    h1_1..h1_T = LSTM_1(x)                            (N, T, H) words only
    u_t = [dropout(h1_t); img]                        (N, T, H + E) the image at every step
    h2_1..h2_T = LSTM_2(u)                            (N, T, H)
    scores = dropout(h2) @ W_out + b_out              (N, T, V)
    loss = masked temporal softmax loss (summed over real tokens, divided by N)

Initial states: ZERO for both layers (h and c), as in LRCN, where the image
is an input of every step of layer 2 and not a starting state (Show and
Tell, by contrast, starts its LSTM from the image). "Factored" (the paper's
LRCN_2f, section 5 of Donahue et al., CVPR 2015) means that the bottom layer
is free of the image; in the "unfactored" variant both layers see it.

Design choices (say so):
- The image feature is projected to E values (the size of a word vector),
  as LRCN feeds layer 2 a CNN output of the word vector's size. W_img and
  the image rows of W_x2 then make a rank-E factorisation of the image's
  (D, 4H) contribution to layer 2's gates: fewer parameters than feeding the
  raw D-vector (1280 x 256 + 256 x 2048 vs 1280 x 2048 for D 1280, H 512).
- Dropout (the `dropout` config key) on the two non-recurrent connections:
  h1 before layer 2 and h2 before the output layer, two independent masks.
- Teacher forcing knows every step's input of both layers in advance (layer
  1: the words; layer 2: h1 and the same image vector at every step), so
  each layer is ONE whole-sequence `lstm_forward` / `lstm_backward`; only
  decoding goes one step at a time (`decode_step`).
"""
import numpy

from nn import backend
from nn import functional as F
from nn.dense import temporal_affine_backward, temporal_affine_forward
from nn.embedding import word_embedding_backward, word_embedding_forward
from nn.losses import log_softmax
from nn.recurrent import lstm_backward, lstm_forward, lstm_step_forward_from_projection

from .base import CaptionModel

__all__ = ["LRCN"]


class LRCN(CaptionModel):
    """Factored two-layer LRCN captioner over a pooled feature vector per image.

    config keys: vocab_size V, feature_dim D, wordvec_dim E (word vectors and
    the image projection), hidden_dim H (both layers), dropout (drop
    probability on h1 and on h2), null_id/start_id/end_id.
    """
    name = "lrcn"
    feature_kind = "pooled"
    title = "LRCN factored, a words-only LSTM under an LSTM that sees the image at every step"
    config_keys = ("wordvec_dim", "hidden_dim", "dropout")   # set by the train options (commands/train.py)

    def __init__(self, config, seed=0, dtype=None):
        config = {"wordvec_dim": 256, "hidden_dim": 512, "dropout": 0.0, **config, "model": self.name}
        super().__init__(config)
        self._check_config(("vocab_size", "feature_dim", "wordvec_dim", "hidden_dim"))
        V, D = config["vocab_size"], config["feature_dim"]
        E, H = config["wordvec_dim"], config["hidden_dim"]
        self._init_params({
            "W_img": ((D, E), "weight"), "b_img": ((E,), "zeros"),
            "W_embed": ((V, E), "embedding"),
            "Wx1": ((E, 4 * H), "weight"), "Wh1": ((H, 4 * H), "weight"), "b1": ((4 * H,), "zeros"),
            "Wx2": ((H + E, 4 * H), "weight"), "Wh2": ((H, 4 * H), "weight"), "b2": ((4 * H,), "zeros"),
            "W_out": ((H, V), "weight"), "b_out": ((V,), "zeros"),
        }, seed, dtype)
        self.params["b1"][H:2 * H] = 1.0  # forget-gate biases 1: remember by default early in training
        self.params["b2"][H:2 * H] = 1.0

    def _dropout_params(self, seed):
        """The dropout settings of h1 and of h2: the same p, two independent masks."""
        second = None if seed is None else int(numpy.random.SeedSequence([seed, 2]).generate_state(1)[0])
        return self._dropout_param(second), self._dropout_param(seed)

    # ---------------------------------------------------------- training
    def forward_backward(self, features, captions, feature_grad=False, dropout_seed=None,
                         token_weights=None):
        """Teacher-forced loss and all gradients.

        Inputs:
        - features: (N, D) pooled image features
        - captions: (N, T+1) int word ids, <START> first, <NULL>-padded
        - feature_grad: also return d loss / d features (for a trainable encoder)
        - dropout_seed: seed of the dropout masks (training mode only)
        - token_weights: None, or (N, T) weights of the target words' losses
          instead of the padding mask (self-critical training; CaptionModel._word_loss)
        Returns:
        - loss: float
        - grads: dict name -> array, same shapes as self.params
        - dfeatures: (N, D) or None
        """
        self._check_inputs(features, captions)
        captions_in, captions_out, mask = self._split_captions(captions)
        scores, cache = self._forward(features, captions_in, dropout_seed)
        loss, dscores = self._word_loss(scores, captions_out, mask, token_weights)
        grads, dfeatures = self._backward(dscores, cache)
        self.grads = grads
        return float(loss), grads, (dfeatures if feature_grad else None)

    def _forward(self, features, captions_in, dropout_seed):
        """Teacher-forced forward pass: scores (N, T, V) and the cache for `_backward`."""
        xp = backend.get_array_module(features, op="LRCN.forward_backward")
        p = self.params
        N, T = captions_in.shape
        H = self.config["hidden_dim"]
        drop1, drop2 = self._dropout_params(dropout_seed)
        zeros = xp.zeros((N, H), dtype=features.dtype)          # h0 of both layers (c0 = 0 in lstm_forward)
        img, img_cache = F.affine_forward(features, p["W_img"], p["b_img"])
        words, embed_cache = word_embedding_forward(captions_in, p["W_embed"])
        h1, lstm1_cache = lstm_forward(words, zeros, p["Wx1"], p["Wh1"], p["b1"])
        h1_dropped, drop1_cache = F.dropout_forward(h1, drop1)
        layer2_in = xp.concatenate([h1_dropped, xp.broadcast_to(img[:, None, :], (N, T, img.shape[1]))], axis=2)
        h2, lstm2_cache = lstm_forward(layer2_in, zeros, p["Wx2"], p["Wh2"], p["b2"])
        h2_dropped, drop2_cache = F.dropout_forward(h2, drop2)
        scores, out_cache = temporal_affine_forward(h2_dropped, p["W_out"], p["b_out"])
        return scores, (img_cache, embed_cache, lstm1_cache, drop1_cache, lstm2_cache, drop2_cache, out_cache)

    def _backward(self, dscores, cache):
        """Backward pass of `_forward`, the same chain in reverse: (grads, dfeatures (N, D))."""
        img_cache, embed_cache, lstm1_cache, drop1_cache, lstm2_cache, drop2_cache, out_cache = cache
        H = self.config["hidden_dim"]
        grads = {}
        dh2_dropped, grads["W_out"], grads["b_out"] = temporal_affine_backward(dscores, out_cache)
        dh2 = F.dropout_backward(dh2_dropped, drop2_cache)
        # The zero initial states are constants: their gradients (the second results) are not needed.
        dlayer2_in, _, grads["Wx2"], grads["Wh2"], grads["b2"] = lstm_backward(dh2, lstm2_cache)
        dimg = dlayer2_in[:, :, H:].sum(axis=1)                 # the same image vector fed T times
        dh1 = F.dropout_backward(dlayer2_in[:, :, :H], drop1_cache)
        dwords, _, grads["Wx1"], grads["Wh1"], grads["b1"] = lstm_backward(dh1, lstm1_cache)
        grads["W_embed"] = word_embedding_backward(dwords, embed_cache)
        dfeatures, grads["W_img"], grads["b_img"] = F.affine_backward(dimg, img_cache)
        return grads, dfeatures

    # ---------------------------------------------------------- decoding
    def init_decode_state(self, features):
        """State before the first word: zero h1, c1, h2, c2 (N, H) and img_gates (N, 4H).

        img_gates = img @ Wx2[H:] + b2 is the image's constant share of layer
        2's gate pre-activations, computed once per image (beam search passes
        it through unchanged).
        """
        self._check_inputs(features)
        xp = backend.get_array_module(features, op="LRCN.init_decode_state")
        p = self.params
        H = self.config["hidden_dim"]
        img, _ = F.affine_forward(features, p["W_img"], p["b_img"])
        img_gates = img @ p["Wx2"][H:] + p["b2"]
        h1, c1, h2, c2 = (xp.zeros((features.shape[0], H), dtype=features.dtype) for _ in range(4))
        return {"h1": h1, "c1": c1, "h2": h2, "c2": c2, "img_gates": img_gates}

    def decode_step(self, words, state):
        """One step: previous words (N,) -> (log_probs (N, V), new state, None)."""
        p = self.params
        H = self.config["hidden_dim"]
        # The fast steps (in-place gate work; one fused kernel on CuPy), same math as lstm_step_forward.
        x = p["W_embed"][words]
        h1, c1, _ = lstm_step_forward_from_projection(x @ p["Wx1"] + p["b1"], state["h1"], state["c1"], p["Wh1"])
        h2, c2, _ = lstm_step_forward_from_projection(h1 @ p["Wx2"][:H] + state["img_gates"], state["h2"],
                                                      state["c2"], p["Wh2"])
        scores = h2 @ p["W_out"] + p["b_out"]
        return log_softmax(scores), dict(state, h1=h1, c1=c1, h2=h2, c2=c2), None
