"""PyTorch versions of our networks, used ONLY by benchmarks/run.py as a speed reference.

Not part of the package: torch is never a dependency of the project. Each
class here computes exactly what the corresponding model of ours computes,
from the same weights, so that timings compare the same arithmetic:

- `TorchEfficientNetLite0`: the feature map of captioning.encoders.efficientnet
  (eval mode, batchnorm folded into the conv weights and biases the same way
  our encoder folds it by default, TensorFlow "same" padding with the odd
  pixel at the bottom/right, ReLU6 in place, residual adds in place).
- `TorchShowAttendTell`: the teacher-forced loss of
  captioning.models.ShowAttendTell (soft attention, gate beta, LSTM with gates
  ordered input, forget, output, g, dropout before the output layer, masked
  softmax loss summed over tokens / N, doubly stochastic regulariser), with
  the same algorithmic shortcuts (feature projection once per batch, the word
  part of the LSTM input projected for all steps in one product); gradients by
  autograd.
- `lstm_from_ours`: a torch.nn.LSTM holding our LSTM weights (gate blocks
  reordered: ours i, f, o, g; PyTorch i, f, g, o).
"""
import numpy as np
import torch
import torch.nn.functional as F

from captioning.encoders import efficientnet as effnet


# ---------------------------------------------------------------- EfficientNet-Lite0

class TorchEfficientNetLite0:
    """EfficientNet-Lite0 feature extractor in torch ops, built from the .pth state dict.

    state_dict: name -> numpy array (as captioning.pth.load_state_dict returns).
    Calling it on images (N, 3, H, W) returns the feature map
    (N, 1280, ceil(H/32), ceil(W/32)). Inference only (run under torch.no_grad()).
    """

    def __init__(self, state_dict, device="cpu"):
        self.device = device
        self.stem = self._unit(state_dict, "_conv_stem", "_bn0", stride=2, groups=1)
        self.block_units = []
        for blk in effnet.blocks():
            p = f"_blocks.{blk.index}"
            hidden = blk.in_channels * blk.expand
            self.block_units.append((
                self._unit(state_dict, f"{p}._expand_conv", f"{p}._bn0", 1, 1) if blk.expand != 1 else None,
                self._unit(state_dict, f"{p}._depthwise_conv", f"{p}._bn1", blk.stride, hidden),
                self._unit(state_dict, f"{p}._project_conv", f"{p}._bn2", 1, 1),
                blk.stride == 1 and blk.in_channels == blk.out_channels))
        self.head = self._unit(state_dict, "_conv_head", "_bn1", 1, 1)

    def _unit(self, sd, conv, bn, stride, groups):
        """(w, b, stride, groups): batchnorm folded exactly as our encoder folds it (float32)."""
        f32 = np.float32
        w = np.asarray(sd[f"{conv}.weight"], dtype=f32)
        gamma, beta = np.asarray(sd[f"{bn}.weight"], f32), np.asarray(sd[f"{bn}.bias"], f32)
        mean, var = np.asarray(sd[f"{bn}.running_mean"], f32), np.asarray(sd[f"{bn}.running_var"], f32)
        scale = gamma / np.sqrt(var + effnet.BN_EPS)
        w_folded = (w * scale.reshape(-1, 1, 1, 1)).astype(f32)
        b_folded = (beta - mean * scale).astype(f32)
        return (torch.from_numpy(w_folded).to(self.device), torch.from_numpy(b_folded).to(self.device),
                stride, groups)

    @staticmethod
    def _conv(x, unit, relu6):
        w, b, stride, groups = unit
        k = w.shape[-1]
        top, bottom = effnet.same_padding(x.shape[2], k, stride)
        left, right = effnet.same_padding(x.shape[3], k, stride)
        if (top, left) == (bottom, right):          # symmetric: let the conv pad (no extra copy)
            out = F.conv2d(x, w, b, stride, (top, left), 1, groups)
        else:                                       # TF "same", odd pixel bottom/right
            out = F.conv2d(F.pad(x, [left, right, top, bottom]), w, b, stride, 0, 1, groups)
        return F.relu6(out, inplace=True) if relu6 else out

    def __call__(self, images):
        x = self._conv(images, self.stem, True)
        for expand, depthwise, project, residual in self.block_units:
            h = self._conv(x, expand, True) if expand is not None else x
            h = self._conv(h, depthwise, True)
            h = self._conv(h, project, False)
            if residual:
                h += x
            x = h
        return self._conv(x, self.head, True)


# ---------------------------------------------------------------- LSTM

def lstm_from_ours(Wx, Wh, b):
    """A torch.nn.LSTM(D, H, batch_first=True) with our weights Wx (D, 4H), Wh (H, 4H), b (4H,)."""
    D, four_h = Wx.shape
    H = four_h // 4
    order = np.r_[0:2 * H, 3 * H:4 * H, 2 * H:3 * H]       # ours i, f, o, g -> torch i, f, g, o
    lstm = torch.nn.LSTM(D, H, batch_first=True)
    with torch.no_grad():
        lstm.weight_ih_l0.copy_(torch.from_numpy(np.ascontiguousarray(Wx[:, order].T)))
        lstm.weight_hh_l0.copy_(torch.from_numpy(np.ascontiguousarray(Wh[:, order].T)))
        lstm.bias_ih_l0.copy_(torch.from_numpy(np.ascontiguousarray(b[order])))
        lstm.bias_hh_l0.zero_()
    return lstm


# ---------------------------------------------------------------- Show, Attend and Tell

class TorchShowAttendTell:
    """The training loss of captioning.models.ShowAttendTell in torch, gradients by autograd.

    params: name -> numpy array (our model's `state_dict()`), config: our model's config.
    """

    def __init__(self, params, config, device="cpu"):
        self.config = config
        self.p = {k: torch.tensor(np.asarray(v), device=device, requires_grad=True) for k, v in params.items()}

    def zero_grad(self):
        for t in self.p.values():
            t.grad = None

    def loss(self, features, captions, training=True):
        """features (N, L, D) float tensor, captions (N, T+1) int64 tensor -> scalar loss tensor."""
        p, cfg = self.p, self.config
        E, H = cfg["wordvec_dim"], cfg["hidden_dim"]
        N, L, D = features.shape
        words_in, targets = captions[:, :-1], captions[:, 1:]
        mask = (targets != cfg.get("null_id", 0)).to(features.dtype)
        T = words_in.shape[1]

        mean = features.mean(dim=1)
        h = torch.tanh(mean @ p["W_h0"] + p["b_h0"])
        c = torch.tanh(mean @ p["W_c0"] + p["b_c0"])
        projected = (features.reshape(N * L, D) @ p["W_att_feat"] + p["b_att"]).reshape(N, L, -1)
        Wx_word, Wx_context = p["Wx"][:E], p["Wx"][E:]
        word_proj = p["W_embed"][words_in] @ Wx_word + p["b"]            # (N, T, 4H), all steps at once
        hiddens, alphas = [], []
        for t in range(T):
            activations = torch.tanh(projected + (h @ p["W_att_h"])[:, None, :])
            alpha = torch.softmax(activations @ p["w_att"], dim=1)      # (N, L)
            context = torch.bmm(alpha[:, None, :], features)[:, 0]      # (N, D)
            beta = torch.sigmoid(h @ p["W_beta"] + p["b_beta"])         # (N, 1)
            a = word_proj[:, t] + (beta * context) @ Wx_context + h @ p["Wh"]
            i, f, o = torch.sigmoid(a[:, :3 * H]).split(H, dim=1)
            g = torch.tanh(a[:, 3 * H:])
            c = f * c + i * g
            h = o * torch.tanh(c)
            hiddens.append(h)
            alphas.append(alpha)
        hidden = F.dropout(torch.stack(hiddens, dim=1), cfg.get("dropout", 0.0), training)
        scores = hidden @ p["W_out"] + p["b_out"]                       # (N, T, V)
        token_loss = F.cross_entropy(scores.reshape(N * T, -1), targets.reshape(-1), reduction="none")
        word_loss = (token_loss * mask.reshape(-1)).sum() / N
        shortfall = 1 - (torch.stack(alphas, dim=1) * mask[:, :, None]).sum(dim=1)   # (N, L)
        return word_loss + float(cfg["doubly_stochastic"]) * (shortfall * shortfall).sum() / N

    def grads(self):
        return {k: t.grad for k, t in self.p.items()}
