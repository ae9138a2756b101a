"""Show and Tell (Vinyals et al. 2015): pooled CNN feature -> LSTM language model.

    h0 = feature @ W_init + b_init        (N, H)   the image sets the initial state
    x_t = W_embed[word_t]                 (N, T, E) teacher forcing: the true previous word
    h_1..h_T = LSTM(x, h0)                (N, T, H) c0 = 0
    scores = dropout(h) @ W_vocab + b_vocab   (N, T, V)
    loss = masked temporal softmax loss (summed over real tokens, divided by N)

Design choice: the image enters through the initial hidden state, as in the
CS231n assignment, rather than being fed as the LSTM's first input as in the
paper (and in Karpathy's NeuralTalk); both condition every word on the image,
and this way every step's input is a word, so the LSTM is one `lstm_forward`.
"""
from nn import backend
from nn import functional as F
from nn.dense import temporal_affine_backward, temporal_affine_forward
from nn.embedding import word_embedding_backward, word_embedding_forward
from nn.losses import log_softmax
from nn.recurrent import lstm_backward, lstm_forward, lstm_step_forward_from_projection

from .base import CaptionModel

__all__ = ["ShowAndTell"]


class ShowAndTell(CaptionModel):
    """Show and Tell captioner over a pooled feature vector per image.

    config keys: vocab_size V, feature_dim D, wordvec_dim E, hidden_dim H,
    dropout (drop probability before the output layer), null_id/start_id/end_id.
    """
    name = "show-tell"
    feature_kind = "pooled"
    title = "Show and Tell, the pooled image vector starts an LSTM"
    config_keys = ("wordvec_dim", "hidden_dim", "dropout")   # set by the train options (commands/train.py)

    def __init__(self, config, seed=0, dtype=None):
        config = {"wordvec_dim": 256, "hidden_dim": 512, "dropout": 0.0, **config,
                  "model": self.name}
        super().__init__(config)
        self._check_config(("vocab_size", "feature_dim", "wordvec_dim", "hidden_dim"))
        V, D = config["vocab_size"], config["feature_dim"]
        E, H = config["wordvec_dim"], config["hidden_dim"]
        self._init_params({
            "W_init": ((D, H), "weight"), "b_init": ((H,), "zeros"),
            "W_embed": ((V, E), "embedding"),
            "Wx": ((E, 4 * H), "weight"), "Wh": ((H, 4 * H), "weight"), "b": ((4 * H,), "zeros"),
            "W_vocab": ((H, V), "weight"), "b_vocab": ((V,), "zeros"),
        }, seed, dtype)
        self.params["b"][H:2 * H] = 1.0  # forget-gate bias 1: remember by default early in training

    def forward_backward(self, features, captions, feature_grad=False, dropout_seed=None,
                         token_weights=None):
        """Teacher-forced loss and all gradients.

        Inputs:
        - features: (N, D) pooled image features
        - captions: (N, T+1) int word ids, <START> first, <NULL>-padded
        - feature_grad: also return d loss / d features (for a trainable encoder)
        - dropout_seed: seed of the dropout mask (training mode only)
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
        """Teacher-forced forward pass: scores (N, T, V) and the cache for `_backward`.

        Every step's input is a word, so the whole recurrence is one
        `lstm_forward` (no per-step helpers, unlike ShowAttendTell).
        """
        p = self.params
        h0, init_cache = F.affine_forward(features, p["W_init"], p["b_init"])
        words, embed_cache = word_embedding_forward(captions_in, p["W_embed"])
        hidden, lstm_cache = lstm_forward(words, h0, p["Wx"], p["Wh"], p["b"])
        dropped, drop_cache = F.dropout_forward(hidden, self._dropout_param(dropout_seed))
        scores, vocab_cache = temporal_affine_forward(dropped, p["W_vocab"], p["b_vocab"])
        return scores, (init_cache, embed_cache, lstm_cache, drop_cache, vocab_cache)

    def _backward(self, dscores, cache):
        """Backward pass of `_forward`, the same chain in reverse: (grads, dfeatures (N, D))."""
        init_cache, embed_cache, lstm_cache, drop_cache, vocab_cache = cache
        grads = {}
        ddropped, grads["W_vocab"], grads["b_vocab"] = temporal_affine_backward(dscores, vocab_cache)
        dhidden = F.dropout_backward(ddropped, drop_cache)
        dwords, dh0, grads["Wx"], grads["Wh"], grads["b"] = lstm_backward(dhidden, lstm_cache)
        grads["W_embed"] = word_embedding_backward(dwords, embed_cache)
        dfeatures, grads["W_init"], grads["b_init"] = F.affine_backward(dh0, init_cache)
        return grads, dfeatures

    # ------------------------------------------------------------ decoding
    def init_decode_state(self, features):
        """Decoder state before the first word: {"h": (N, H), "c": (N, H)}."""
        self._check_inputs(features)
        xp = backend.get_array_module(features, op="ShowAndTell.init_decode_state")
        h0, _ = F.affine_forward(features, self.params["W_init"], self.params["b_init"])
        return {"h": h0, "c": xp.zeros_like(h0)}

    def decode_step(self, words, state):
        """One step: previous words (N,) -> (log_probs (N, V), new state, None)."""
        p = self.params
        x = p["W_embed"][words]
        # The fast step (in-place gate work; one fused kernel on CuPy), same math as lstm_step_forward.
        h, c, _ = lstm_step_forward_from_projection(x @ p["Wx"] + p["b"], state["h"], state["c"], p["Wh"])
        scores = h @ p["W_vocab"] + p["b_vocab"]
        return log_softmax(scores), {"h": h, "c": c}, None
