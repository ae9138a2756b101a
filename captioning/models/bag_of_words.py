"""A bag-of-words captioner: the smallest model that fits the interface (a template for new ones).

    img = feature @ W_img + b_img              (N, E)    the mean-pooled image vector, projected
    bag_t = W_embed[w_0] + ... + W_embed[w_t]  (N, T, E) the words so far, their order ignored
    h_t = tanh(img + bag_t)                    (N, T, E)
    scores = h @ W_vocab + b_vocab             (N, T, V)
    loss = masked temporal softmax loss (summed over real tokens, divided by N)

It knows which words it has said but not in what order, so it captions
poorly; it is here to show what a model must provide: `name`, `title`,
`feature_kind`, `config_keys`, `forward_backward` (the loss and every
gradient, by hand) and `init_decode_state` / `decode_step` (captioning.decoding).
"""
from nn import functional as F
from nn.recurrent import (temporal_affine_backward, temporal_affine_forward, word_embedding_backward,
                          word_embedding_forward)

from .base import CaptionModel, log_softmax

__all__ = ["BagOfWords"]


class BagOfWords(CaptionModel):
    """Bag-of-words captioner over a pooled feature vector per image.

    config keys: vocab_size V, feature_dim D, wordvec_dim E, null_id/start_id/end_id.
    """
    name = "bag-of-words"
    title = "a toy, the pooled image vector plus the sum of the words so far (word order ignored)"
    feature_kind = "pooled"
    config_keys = ("wordvec_dim",)

    def __init__(self, config, seed=0, dtype=None):
        config = {"wordvec_dim": 64, **config, "model": self.name}
        super().__init__(config)
        self._check_config(("vocab_size", "feature_dim", "wordvec_dim"))
        V, D, E = config["vocab_size"], config["feature_dim"], config["wordvec_dim"]
        self._init_params({"W_img": ((D, E), "weight"), "b_img": ((E,), "zeros"),
                           "W_embed": ((V, E), "embedding"),
                           "W_vocab": ((E, V), "weight"), "b_vocab": ((V,), "zeros")}, seed, dtype)

    def forward_backward(self, features, captions, feature_grad=False, dropout_seed=None,
                         token_weights=None):
        """Teacher-forced loss and all gradients.

        Inputs: features (N, D); captions (N, T+1) word ids, <START> first,
        <NULL>-padded; feature_grad: also return d loss / d features; dropout_seed: unused;
        token_weights: None, or (N, T) weights of the target words' losses (CaptionModel._word_loss).
        Returns (loss, grads (same names and shapes as self.params), dfeatures (N, D) or None).
        """
        self._check_inputs(features, captions)
        p = self.params
        captions_in, captions_out, mask = self._split_captions(captions)
        img, img_cache = F.affine_forward(features, p["W_img"], p["b_img"])
        words, embed_cache = word_embedding_forward(captions_in, p["W_embed"])
        h, tanh_cache = F.tanh_forward(img[:, None, :] + words.cumsum(axis=1))
        scores, vocab_cache = temporal_affine_forward(h, p["W_vocab"], p["b_vocab"])
        loss, dscores = self._word_loss(scores, captions_out, mask, token_weights)

        grads = {}
        dh, grads["W_vocab"], grads["b_vocab"] = temporal_affine_backward(dscores, vocab_cache)
        dsum = F.tanh_backward(dh, tanh_cache)
        # word s enters every bag_t with t >= s: its gradient is the sum of theirs (a reversed cumsum)
        dwords = dsum[:, ::-1].cumsum(axis=1)[:, ::-1]
        grads["W_embed"] = word_embedding_backward(dwords, embed_cache)
        dfeatures, grads["W_img"], grads["b_img"] = F.affine_backward(dsum.sum(axis=1), img_cache)
        self.grads = grads
        return float(loss), grads, (dfeatures if feature_grad else None)

    def init_decode_state(self, features):
        """{"img": (N, E) the projected image (constant), "bag": (N, E) zeros}."""
        self._check_inputs(features)
        img, _ = F.affine_forward(features, self.params["W_img"], self.params["b_img"])
        return {"img": img, "bag": img * 0}

    def decode_step(self, words, state):
        """Previous words (N,) -> (log_probs (N, V), new state, None)."""
        p = self.params
        bag = state["bag"] + p["W_embed"][words]
        h = F.tanh_forward(state["img"] + bag)[0]
        return log_softmax(h @ p["W_vocab"] + p["b_vocab"]), dict(state, bag=bag), None
