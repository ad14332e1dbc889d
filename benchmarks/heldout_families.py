"""Held-out model families (small seeded torch exports) through the zero-config commands, beside onnxslim.

    .venv/bin/python benchmarks/heldout_families.py                       # every variant; RESULTS.md
    .venv/bin/python benchmarks/heldout_families.py --models vit_ts_op14,gpt2hf_ts --no-results

The passes and the shape resolution were written against OCR, keyword-spotting and zoo CNNs;
these are families they never saw: MobileNetV3 and EfficientNet (HardSwish / SiLU, squeeze-
excite), ViT and DeiT (hand-written and SDPA attention) and a ``torch.nn.TransformerEncoder``
ViT, a YOLOv5-style detector (Focus, C2f, SPPF, decoding head), a U-Net, GPT-2-style decoders
(causal mask by ``tril``, by a buffer, by nanoGPT's ``masked_fill``; a stacked KV cache; and
Hugging Face style with ``attention_mask``, ``position_ids`` and per-layer past), LSTM/GRU
speech models (one streaming, with state inputs) and an image + token-ids model. Each is
exported by torch's TorchScript exporter at opset 17 (plus opset 13/14 for MobileNetV3, ViT
and DeiT: LayerNormalization and HardSwish do not exist there yet) and by its dynamo exporter
at opset 18 (at 17, torch 2.13's dynamo exporter writes an opset-18 ``Split`` into GPT-2: an
invalid model).

Per variant: nodes of the original, of ``trtforge passes MODEL -o OUT`` and of
``onnxslim.slim``; the max relative difference (``graph_passes.verify.compare``) of our output
against the original in ONNX Runtime (CPU, optimisations off) on the export's seeded inputs,
and whether it is within verification tolerance; and ``trtforge optimize MODEL -o OUT
--synthetic``: its outcome (ok = exit 0, gate = 1, refused = 2) and whether an engine was
built. The commands run as subprocesses (``benchmarks/corpus.py``'s runner) with a fresh
stage cache under the work folder; run with TMPDIR and XDG_CACHE_HOME pointing at a scratch
folder, as ``make bench`` does.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
# First on the path: this folder's graph_passes.py (a benchmark) must not shadow the package.
sys.path.insert(0, str(ROOT))

from benchmarks.corpus import OPTIMIZE_TIMEOUT, PASSES_TIMEOUT, CorpusModel, Outcome, run_command  # noqa: E402

SECTION = "Held-out families (torch exports), zero-config"


# --- CNNs: MobileNetV3, EfficientNet, U-Net ----------------------------------------------------


def conv_bn(cin: int, cout: int, k: int = 1, stride: int = 1, groups: int = 1, act: type[nn.Module] | None = None) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, *([act()] if act else []))


class SqueezeExcite(nn.Module):
    def __init__(self, c: int, act: type[nn.Module], gate: type[nn.Module]):
        super().__init__()
        self.fc = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(c, c // 4, 1), act(), nn.Conv2d(c // 4, c, 1), gate())

    def forward(self, x):
        return x * self.fc(x)


class InvertedResidual(nn.Module):
    """MobileNetV3 / EfficientNet block: expand, depthwise, optional squeeze-excite, project, skip."""

    def __init__(self, cin, cexp, cout, k, stride, act, se: tuple | None = None):
        super().__init__()
        self.skip = stride == 1 and cin == cout
        self.body = nn.Sequential(conv_bn(cin, cexp, act=act), conv_bn(cexp, cexp, k, stride, cexp, act),
                                  SqueezeExcite(cexp, *se) if se else nn.Identity(), conv_bn(cexp, cout))

    def forward(self, x):
        return x + self.body(x) if self.skip else self.body(x)


def mobilenet_v3(n: int = 10) -> nn.Module:
    hs, relu, se = nn.Hardswish, nn.ReLU, (nn.ReLU, nn.Hardsigmoid)
    return nn.Sequential(
        conv_bn(3, 16, 3, 2, act=hs), InvertedResidual(16, 16, 16, 3, 2, relu, se), InvertedResidual(16, 72, 24, 3, 2, relu),
        InvertedResidual(24, 88, 24, 3, 1, relu), InvertedResidual(24, 96, 40, 5, 2, hs, se),
        InvertedResidual(40, 240, 40, 5, 1, hs, se), conv_bn(40, 96, act=hs), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(96, 128), hs(), nn.Dropout(0.2), nn.Linear(128, n))


def efficientnet(n: int = 10) -> nn.Module:
    silu, se = nn.SiLU, (nn.SiLU, nn.Sigmoid)
    return nn.Sequential(
        conv_bn(3, 16, 3, 2, act=silu), InvertedResidual(16, 16, 16, 3, 1, silu, se), InvertedResidual(16, 64, 24, 3, 2, silu, se),
        InvertedResidual(24, 96, 24, 3, 1, silu, se), InvertedResidual(24, 96, 40, 5, 2, silu, se), conv_bn(40, 128, act=silu),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, n))


class UNet(nn.Module):
    def __init__(self, w: int = 16):
        super().__init__()
        double = lambda cin, cout: nn.Sequential(conv_bn(cin, cout, 3, act=nn.ReLU), conv_bn(cout, cout, 3, act=nn.ReLU))  # noqa: E731
        self.down = nn.ModuleList([double(3, w), double(w, 2 * w), double(2 * w, 4 * w), double(4 * w, 8 * w)])
        self.up = nn.ModuleList([nn.ConvTranspose2d(c, c // 2, 2, 2) for c in (8 * w, 4 * w, 2 * w)])
        self.fuse = nn.ModuleList([double(c, c // 2) for c in (8 * w, 4 * w, 2 * w)])
        self.bn_after_up = nn.BatchNorm2d(w)  # a BatchNorm after a ConvTranspose: foldable into it
        self.out = nn.Conv2d(w, 2, 1)

    def forward(self, x):
        skips = []
        for i, block in enumerate(self.down):
            x = block(F.max_pool2d(x, 2) if i else x)
            skips.append(x)
        for i, (up, fuse) in enumerate(zip(self.up, self.fuse)):
            x = up(x)
            x = fuse(torch.cat([self.bn_after_up(x) if i == 2 else x, skips[2 - i]], 1))
        return torch.sigmoid(self.out(x))


# --- vision transformers ----------------------------------------------------------------------


class Attention(nn.Module):
    def __init__(self, d: int, h: int, sdpa: bool):
        super().__init__()
        self.h, self.dh, self.sdpa = h, d // h, sdpa
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)

    def forward(self, x):
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.h, self.dh).permute(2, 0, 3, 1, 4).unbind(0)
        if self.sdpa:
            o = F.scaled_dot_product_attention(q, k, v)
        else:
            o = ((q @ k.transpose(-2, -1)) * self.dh**-0.5).softmax(-1) @ v
        return self.proj(o.transpose(1, 2).reshape(B, N, C))


class ViTBlock(nn.Module):
    def __init__(self, d: int, h: int, sdpa: bool):
        super().__init__()
        self.n1, self.n2 = nn.LayerNorm(d, eps=1e-6), nn.LayerNorm(d, eps=1e-6)
        self.attn = Attention(d, h, sdpa)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x):
        x = x + self.attn(self.n1(x))
        return x + self.mlp(self.n2(x))


class ViT(nn.Module):
    """ViT (class token, written-out attention) or DeiT (class + distillation token, SDPA)."""

    def __init__(self, deit: bool = False, img: int = 64, p: int = 16, d: int = 96, depth: int = 3, h: int = 3):
        super().__init__()
        tokens = 2 if deit else 1
        self.patch = nn.Conv2d(3, d, p, p)
        self.tokens = nn.Parameter(torch.randn(1, tokens, d) * 0.02)
        self.pos = nn.Parameter(torch.randn(1, (img // p) ** 2 + tokens, d) * 0.02)
        self.blocks = nn.Sequential(*[ViTBlock(d, h, sdpa=deit) for _ in range(depth)])
        self.norm, self.head = nn.LayerNorm(d, eps=1e-6), nn.Linear(d, 10)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.tokens.expand(x.shape[0], -1, -1), x], 1) + self.pos
        return self.head(self.norm(self.blocks(x))[:, 0])


class TorchViT(nn.Module):
    """ViT on ``nn.TransformerEncoder`` (pre-norm, GELU); its fused fast path only dynamo exports."""

    def __init__(self):
        super().__init__()
        self.patch = nn.Conv2d(3, 64, 8, 8)
        self.cls = nn.Parameter(torch.randn(1, 1, 64) * 0.02)
        self.pos = nn.Parameter(torch.randn(1, 17, 64) * 0.02)
        layer = nn.TransformerEncoderLayer(64, 4, 128, dropout=0.1, activation="gelu", batch_first=True, norm_first=True)
        self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(64, 10)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1) + self.pos
        return self.head(self.enc(x)[:, 0])


# --- YOLOv5-style detector -------------------------------------------------------------------


class C2f(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.c = cout // 2
        self.cv1, self.cv2 = conv_bn(cin, 2 * self.c, act=nn.SiLU), conv_bn(3 * self.c, cout, act=nn.SiLU)
        self.m = nn.Sequential(conv_bn(self.c, self.c, 3, act=nn.SiLU), conv_bn(self.c, self.c, 3, act=nn.SiLU))

    def forward(self, x):
        y = list(self.cv1(x).split((self.c, self.c), 1))
        return self.cv2(torch.cat([*y, y[-1] + self.m(y[-1])], 1))


class SPPF(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.cv1, self.cv2, self.pool = conv_bn(c, c // 2, act=nn.SiLU), conv_bn(c * 2, c, act=nn.SiLU), nn.MaxPool2d(5, 1, 2)

    def forward(self, x):
        y = [self.cv1(x)]
        for _ in range(3):
            y.append(self.pool(y[-1]))
        return self.cv2(torch.cat(y, 1))


class Detect(nn.Module):
    """YOLOv5 head: per level conv, sigmoid, xy = (2s - 0.5 + grid) * stride, wh = (2s)^2 * anchor."""

    def __init__(self, nc: int, chs: Sequence[int], strides: Sequence[int]):
        super().__init__()
        self.no, self.strides = nc + 5, strides
        self.m = nn.ModuleList([nn.Conv2d(c, self.no * 3, 1) for c in chs])
        anchors = [[10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119], [116, 90, 156, 198, 373, 326]]
        self.register_buffer("anchors", torch.tensor(anchors, dtype=torch.float32).view(3, 1, 3, 1, 1, 2))

    def forward(self, xs):
        z = []
        for i, x in enumerate(xs):
            x = self.m[i](x)
            bs, _, ny, nx = x.shape
            x = x.view(bs, 3, self.no, ny, nx).permute(0, 1, 3, 4, 2).contiguous()
            yv, xv = torch.meshgrid(torch.arange(ny, dtype=torch.float32), torch.arange(nx, dtype=torch.float32), indexing="ij")
            grid = torch.stack((xv, yv), 2).view(1, 1, ny, nx, 2)
            xy, wh, conf = x.sigmoid().split((2, 2, self.no - 4), 4)
            xy = (xy * 2 - 0.5 + grid) * self.strides[i]
            wh = (wh * 2) ** 2 * self.anchors[i]
            z.append(torch.cat((xy, wh, conf), 4).view(bs, -1, self.no))
        return torch.cat(z, 1)


class YOLO(nn.Module):
    def __init__(self, nc: int = 4):
        super().__init__()
        self.focus = conv_bn(12, 16, 3, act=nn.SiLU)  # on the space-to-depth of the image
        self.d1 = nn.Sequential(conv_bn(16, 32, 3, 2, act=nn.SiLU), C2f(32, 32))
        self.d2 = nn.Sequential(conv_bn(32, 64, 3, 2, act=nn.SiLU), C2f(64, 64))
        self.d3 = nn.Sequential(conv_bn(64, 128, 3, 2, act=nn.SiLU), C2f(128, 128), SPPF(128))
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.h1, self.h2 = C2f(128 + 64, 64), C2f(64 + 32, 32)
        self.detect = Detect(nc, (32, 64, 128), (8, 16, 32))

    def forward(self, x):
        x = torch.cat([x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]], 1)
        p3 = self.d1(self.focus(x))
        p4 = self.d2(p3)
        p5 = self.d3(p4)
        t4 = self.h1(torch.cat([self.up(p5), p4], 1))
        t3 = self.h2(torch.cat([F.interpolate(t4, scale_factor=2.0, mode="nearest"), p3], 1))
        return self.detect([t3, t4, p5])


# --- GPT-2-style decoders --------------------------------------------------------------------


class CausalSelfAttention(nn.Module):
    """GPT-2 attention; ``mask`` is how the causal mask is written: "tril" (built per call),
    "buffer" (a slice of a stored lower triangle) or "masked_fill" (nanoGPT: ``bias == 0`` to -inf)."""

    def __init__(self, d: int, h: int, maxlen: int, mask: str):
        super().__init__()
        self.h, self.dh, self.mask = h, d // h, mask
        self.c_attn, self.c_proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        if mask != "tril":
            self.register_buffer("bias", torch.tril(torch.ones(maxlen, maxlen, dtype=torch.bool)).view(1, 1, maxlen, maxlen))

    def forward(self, x, past=None, additive=None):
        B, T, C = x.shape
        q, k, v = (t.view(B, T, self.h, self.dh).transpose(1, 2) for t in self.c_attn(x).split(C, dim=2))
        if past is not None:
            k, v = torch.cat([past[0], k], 2), torch.cat([past[1], v], 2)
        S = k.shape[2]
        att = (q @ k.transpose(-2, -1)) / math.sqrt(self.dh)
        if self.mask == "masked_fill":
            att = att.masked_fill(self.bias[:, :, :T, :T] == 0, float("-inf"))
        else:
            keep = torch.tril(torch.ones(S, S, dtype=torch.bool))[S - T :, :] if self.mask == "tril" else self.bias[:, :, S - T : S, :S]
            att = torch.where(keep, att, torch.finfo(att.dtype).min)
        if additive is not None:
            att = att + additive
        y = (F.softmax(att, dim=-1) @ v).transpose(1, 2).contiguous().view(B, T, C)
        return self.c_proj(y), (k, v)


class GPTBlock(nn.Module):
    def __init__(self, d: int, h: int, maxlen: int, mask: str):
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = CausalSelfAttention(d, h, maxlen, mask)
        self.c_fc, self.c_proj, self.drop = nn.Linear(d, 4 * d), nn.Linear(4 * d, d), nn.Dropout(0.1)

    def forward(self, x, past=None, additive=None):
        a, present = self.attn(self.ln_1(x), past, additive)
        x = x + a
        h = self.c_fc(self.ln_2(x))
        h = 0.5 * h * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (h + 0.044715 * torch.pow(h, 3.0))))  # GPT-2's GELU
        return x + self.drop(self.c_proj(h)), present


class GPT2(nn.Module):
    """input_ids -> logits (tied embeddings, two blocks)."""

    VOCAB = 500

    def __init__(self, mask: str = "tril", d: int = 64, h: int = 4, layers: int = 2, maxlen: int = 128):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(self.VOCAB, d), nn.Embedding(maxlen, d)
        self.h = nn.ModuleList([GPTBlock(d, h, maxlen, mask) for _ in range(layers)])
        self.ln_f = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, self.VOCAB, bias=False)
        self.lm_head.weight = self.wte.weight

    def decode(self, input_ids, position_ids, pasts, additive=None):
        """(logits, [(key, value) per layer])."""
        x = self.wte(input_ids) + self.wpe(position_ids)
        presents = []
        for block, past in zip(self.h, pasts):
            x, present = block(x, past, additive)
            presents.append(present)
        return self.lm_head(self.ln_f(x)), presents

    def forward(self, input_ids):
        pos = torch.arange(0, input_ids.shape[1], dtype=torch.long).unsqueeze(0)
        return self.decode(input_ids, pos, [None] * len(self.h))[0]


class GPT2Past(GPT2):
    """A stacked KV cache: past_key_values [layers, 2, batch, heads, past, head_dim] -> present."""

    def __init__(self):
        super().__init__(mask="buffer")

    def forward(self, input_ids, past_key_values):
        P, T = past_key_values.shape[4], input_ids.shape[1]
        pos = torch.arange(P, P + T, dtype=torch.long).unsqueeze(0)
        logits, presents = self.decode(input_ids, pos, past_key_values)
        return logits, torch.stack([torch.stack(kv) for kv in presents])


class HFGPT2(GPT2):
    """Hugging Face style: input_ids, attention_mask (int64 0/1), position_ids, past.{i}.key/value."""

    def forward(self, input_ids, attention_mask, position_ids, pk0, pv0, pk1, pv1):
        additive = (1.0 - attention_mask[:, None, None, :].to(torch.float32)) * torch.finfo(torch.float32).min
        logits, presents = self.decode(input_ids, position_ids, [(pk0, pv0), (pk1, pv1)], additive)
        return (logits, *(t for kv in presents for t in kv))


# --- recurrent and two-input models ---------------------------------------------------------


class SpeechRNN(nn.Module):
    """Conv1d front end, two bidirectional LSTM (or GRU) layers, per-frame log-probabilities."""

    def __init__(self, gru: bool = False, feat: int = 40, hid: int = 64):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv1d(feat, hid, 3, padding=1), nn.BatchNorm1d(hid), nn.ReLU())
        self.rnn = (nn.GRU if gru else nn.LSTM)(hid, hid, num_layers=2, batch_first=True, bidirectional=True)
        self.fc = nn.Linear(2 * hid, 30)

    def forward(self, x):
        y, _ = self.rnn(self.conv(x.transpose(1, 2)).transpose(1, 2))
        return F.log_softmax(self.fc(y), dim=-1)


class StreamLSTM(nn.Module):
    """Streaming: the LSTM state comes in (h0, c0) and goes out (h, c)."""

    def __init__(self):
        super().__init__()
        self.lstm, self.fc = nn.LSTM(40, 64, num_layers=2, batch_first=True), nn.Linear(64, 30)

    def forward(self, x, h0, c0):
        y, (h, c) = self.lstm(x, (h0, c0))
        return self.fc(y), h, c


class ImgText(nn.Module):
    """float32 image + int64 token ids."""

    def __init__(self, vocab: int = 300, d: int = 32):
        super().__init__()
        self.cnn = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, d, 3, 2, 1), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.emb, self.fc = nn.Embedding(vocab, d), nn.Linear(2 * d, 5)

    def forward(self, image, ids):
        return self.fc(torch.cat([self.cnn(image), self.emb(ids).mean(1)], 1))


# --- families and export variants ------------------------------------------------------------


@dataclass(frozen=True)
class Family:
    build: Callable[[], nn.Module]
    example: Callable[[], tuple]  # example inputs: traced by the exporter, then the feeds compared in ORT
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    axes: dict  # dynamic axes by input/output name (the TorchScript exporter's dynamic_axes)


def _image(b: int, s: int) -> Callable[[], tuple]:
    return lambda: (torch.randn(b, 3, s, s),)


def _hf_inputs(batch: int = 2, seq: int = 4, past: int = 6) -> tuple:
    kv = [torch.randn(batch, 4, past, 16) for _ in range(4)]
    position_ids = torch.arange(past, past + seq).unsqueeze(0).expand(batch, seq).contiguous()
    return (torch.randint(0, GPT2.VOCAB, (batch, seq)), torch.ones(batch, past + seq, dtype=torch.long), position_ids, *kv)


_BHW = {0: "batch", 2: "h", 3: "w"}
_KV = {0: "batch", 2: "past"}
_SPEECH = ((lambda: (torch.randn(2, 50, 40),)), ("feats",), ("logprobs",),
           {"feats": {0: "batch", 1: "time"}, "logprobs": {0: "batch", 1: "time"}})
_VIT = (_image(2, 64), ("pixel_values",), ("logits",), {"pixel_values": {0: "batch"}, "logits": {0: "batch"}})
_GPT = ((lambda: (torch.randint(0, GPT2.VOCAB, (2, 16)),)), ("input_ids",), ("logits",),
        {"input_ids": {0: "batch", 1: "seq"}, "logits": {0: "batch", 1: "seq"}})
_HF_PAST = ("past.0.key", "past.0.value", "past.1.key", "past.1.value")

FAMILIES: dict[str, Family] = {
    "mbv3": Family(mobilenet_v3, _image(2, 96), ("x",), ("logits",), {"x": _BHW, "logits": {0: "batch"}}),
    "effnet": Family(efficientnet, _image(2, 96), ("x",), ("logits",), {"x": _BHW, "logits": {0: "batch"}}),
    "vit": Family(ViT, *_VIT),
    "deit": Family(lambda: ViT(deit=True), *_VIT),
    "torchvit": Family(TorchViT, _image(2, 32), ("pixel_values",), ("logits",), {"pixel_values": {0: "batch"}, "logits": {0: "batch"}}),
    "yolo": Family(YOLO, _image(1, 128), ("images",), ("output0",),
                   {"images": {0: "batch", 2: "height", 3: "width"}, "output0": {0: "batch", 1: "anchors"}}),
    "unet": Family(UNet, _image(1, 64), ("x",), ("mask",), {"x": _BHW, "mask": _BHW}),
    "gpt2": Family(GPT2, *_GPT),
    "nanogpt": Family(lambda: GPT2(mask="masked_fill"), *_GPT),
    "gpt2_past": Family(GPT2Past, lambda: (torch.randint(0, GPT2.VOCAB, (2, 4)), torch.randn(2, 2, 2, 4, 8, 16)),
                        ("input_ids", "past_key_values"), ("logits", "present"),
                        {"input_ids": {0: "batch", 1: "seq"}, "past_key_values": {2: "batch", 4: "past"},
                         "logits": {0: "batch", 1: "seq"}, "present": {2: "batch", 4: "total"}}),
    "gpt2hf": Family(HFGPT2, _hf_inputs, ("input_ids", "attention_mask", "position_ids", *_HF_PAST),
                     ("logits", *(n.replace("past", "present") for n in _HF_PAST)),
                     {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "total"},
                      "position_ids": {0: "batch", 1: "seq"}, **{n: _KV for n in _HF_PAST}}),
    "lstm": Family(SpeechRNN, *_SPEECH),
    "gru": Family(lambda: SpeechRNN(gru=True), *_SPEECH),
    "streamlstm": Family(StreamLSTM, lambda: (torch.randn(2, 10, 40), torch.zeros(2, 2, 64), torch.zeros(2, 2, 64)),
                         ("x", "h0", "c0"), ("y", "h", "c"), {"x": {0: "batch", 1: "time"}, "h0": {1: "batch"}, "c0": {1: "batch"}}),
    "imgtext": Family(ImgText, lambda: (torch.randn(2, 3, 64, 64), torch.randint(0, 300, (2, 12))), ("image", "ids"), ("scores",),
                      {"image": _BHW, "ids": {0: "batch", 1: "seq"}, "scores": {0: "batch"}}),
}

OLDER_OPSETS = {"mbv3": 13, "vit": 14, "deit": 14}  # before HardSwish (14) / LayerNormalization (17)


def _variants() -> dict[str, tuple[str, str, int]]:
    """name -> (family, exporter, opset), grouped by family."""
    variants = {}
    for family in FAMILIES:
        if family != "torchvit":  # the TorchScript exporter has no symbolic for the fused encoder layer
            variants[f"{family}_ts"] = (family, "ts", 17)
        if family in OLDER_OPSETS:
            variants[f"{family}_ts_op{OLDER_OPSETS[family]}"] = (family, "ts", OLDER_OPSETS[family])
        variants[f"{family}_dynamo"] = (family, "dynamo", 18)
    return variants


VARIANTS = _variants()


def build_model(family: str) -> nn.Module:
    """The family's model, seeded; BatchNorm statistics measured on its own example inputs, so
    activations neither vanish nor saturate and outputs depend on the input."""
    spec = FAMILIES[family]
    torch.manual_seed(0)
    model = spec.build()
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if norms:
        for bn in norms:
            bn.momentum = None  # a cumulative average over the batches below
            bn.reset_running_stats()
        model.train()
        with torch.no_grad():
            for _ in range(4):
                model(*spec.example())
    return model.eval()


def example_inputs(family: str) -> tuple:
    torch.manual_seed(1)
    return FAMILIES[family].example()


def example_feeds(variant: str) -> dict:
    """The seeded example inputs as ONNX Runtime feeds, by input name."""
    family = VARIANTS[variant][0]
    return {name: t.numpy() for name, t in zip(FAMILIES[family].inputs, example_inputs(family))}


def export(variant: str, folder: Path) -> Path:
    """Export ``variant`` to ``folder/<variant>.onnx`` (torch's chatter kept out of the output)."""
    family, exporter, opset = VARIANTS[variant]
    spec, model, args = FAMILIES[family], build_model(family), example_inputs(family)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{variant}.onnx"
    names = {"input_names": list(spec.inputs), "output_names": list(spec.outputs), "opset_version": opset}
    from optimizer.torch_export import quiet_torch

    with torch.no_grad(), quiet_torch():
        if exporter == "ts":
            torch.onnx.export(model, args, path, dynamic_axes=spec.axes, dynamo=False, **names)
        else:
            shapes = tuple({axis: torch.export.Dim.AUTO for axis in spec.axes.get(n, {})} for n in spec.inputs)
            torch.onnx.export(model, args, path, dynamic_shapes=shapes, dynamo=True, external_data=False, **names)
    return path


# --- measurement ------------------------------------------------------------------------------


def nodes(path: Path) -> int:
    from optimizer.model import count_nodes, load_model

    return count_nodes(load_model(path))


def slim(path: Path, out: Path) -> Path:
    """``onnxslim.slim`` with its defaults, saved to ``out``."""
    import onnx
    import onnxslim

    with contextlib.redirect_stdout(io.StringIO()):
        onnx.save(onnxslim.slim(str(path)), out)
    return out


def output_diff(original: Path, written: Path, feeds: dict) -> tuple[float, bool]:
    """(worst max relative difference over outputs, all within verification tolerance) in ORT."""
    from graph_passes.verify import compare
    from optimizer.runners import OrtRunner

    reference = OrtRunner(original, optimization="disable").run(feeds)
    diffs = compare(reference, OrtRunner(written, optimization="disable").run(feeds))
    return max(d.max_rel for d in diffs), all(d.ok for d in diffs)


@dataclass
class Row:
    variant: str
    nodes_original: int
    passes: Outcome
    optimize: Outcome
    nodes_ours: int | None = None
    opset_ours: int | None = None
    nodes_slim: int | str = "-"  # an error message when onnxslim failed
    max_rel: float | None = None
    within: bool | None = None


def measure(variant: str, work: Path, env: dict) -> Row:
    """Export one variant, then passes, onnxslim, the ORT comparison and optimize --synthetic."""
    from optimizer.model import load_model, opset_of

    folder = work / variant
    path = export(variant, folder)
    model = CorpusModel("heldout", variant, path, None)
    feeds = {k: v for k, v in example_feeds(variant).items() if k in {i.name for i in load_model(path).graph.inputs}}
    row = Row(variant, nodes(path), run_command(model, "passes", folder, timeout=PASSES_TIMEOUT, env=env),
              run_command(model, "optimize", folder, timeout=OPTIMIZE_TIMEOUT, env=env))
    if row.passes.status == "ok":
        ours = folder / "passes.onnx"
        row.nodes_ours, row.opset_ours = nodes(ours), opset_of(load_model(ours))
        row.max_rel, row.within = output_diff(path, ours, feeds)
    try:
        row.nodes_slim = nodes(slim(path, folder / "slim.onnx"))
    except Exception as exc:  # a peer failing on a model is a finding, not a crash of the benchmark
        row.nodes_slim = f"error: {' '.join(str(exc).split())[:80]}"
    return row


# --- output ----------------------------------------------------------------------------------

HEADER = ("| variant | exporter | opset (ours) | nodes orig | ours | onnxslim | ours <= slim | max rel diff vs orig "
          "| passes | optimize --synthetic | engine | s passes / optimize |")


def _status(outcome: Outcome) -> str:
    return outcome.status + (f": {outcome.reason.replace('|', '/')}" if outcome.reason else "")


def format_row(row: Row) -> str:
    _, exporter, opset = VARIANTS[row.variant]
    ours = "-" if row.nodes_ours is None else str(row.nodes_ours)
    fewer = "-" if row.nodes_ours is None or isinstance(row.nodes_slim, str) else ("yes" if row.nodes_ours <= row.nodes_slim else "no")
    opsets = f"{opset} -> {row.opset_ours}" if row.opset_ours not in (None, opset) else str(opset)
    diff = "-" if row.max_rel is None else f"{row.max_rel:.1e}" + ("" if row.within else " (out of tolerance)")
    engine = "yes" if row.optimize.engine else "no"
    return (f"| {row.variant} | {exporter} | {opsets} | {row.nodes_original} | {ours} | {row.nodes_slim} | {fewer} | {diff} "
            f"| {_status(row.passes)} | {_status(row.optimize)} | {engine} | {row.passes.seconds:.1f} / {row.optimize.seconds:.1f} |")


def markdown(rows: Sequence[Row]) -> str:
    n = len(rows)
    fewer = [r for r in rows if r.nodes_ours is not None and not isinstance(r.nodes_slim, str) and r.nodes_ours <= r.nodes_slim]
    behind = [r.variant for r in rows if r not in fewer]
    diffs = [r.max_rel for r in rows if r.max_rel is not None]
    summary = (
        f"`passes` exit 0 on {sum(r.passes.status == 'ok' for r in rows)} of {n}; nodes <= onnxslim on {len(fewer)} of {n}"
        + (f" (not on: {', '.join(behind)})" if behind else "")
        + f"; outputs within verification tolerance on {sum(bool(r.within) for r in rows)} of {n}"
        + (f" (worst max rel diff {max(diffs):.1e})" if diffs else "")
        + f"; `optimize --synthetic` exit 0 on {sum(r.optimize.status == 'ok' for r in rows)} of {n},"
        + f" an engine built on {sum(bool(r.optimize.engine) for r in rows)} of {n}."
    )
    return "\n".join([HEADER, "|" + "---|" * 12, *(format_row(r) for r in rows), "", summary])


def versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for dist in ("trtforge", "torch", "onnx", "onnx-ir", "onnxruntime", "onnxslim", "tensorrt-rtx"):
        with contextlib.suppress(PackageNotFoundError):
            found.append(f"{dist} {version(dist)}")
    return ", ".join(found) + f", {os.cpu_count()} CPUs"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--models", default="", help=f"comma-separated variants (default all): {', '.join(VARIANTS)}")
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "heldout", help="exports and outputs (emptied first)")
    parser.add_argument("--no-results", action="store_true", help="do not update benchmarks/RESULTS.md (a --models run never does)")
    args = parser.parse_args(argv)
    names = [n for n in args.models.split(",") if n] or list(VARIANTS)
    if unknown := [n for n in names if n not in VARIANTS]:
        parser.error(f"unknown models {unknown}; choose from {', '.join(VARIANTS)}")
    if args.work.exists():
        shutil.rmtree(args.work)
    env = {**os.environ, "TRTFORGE_CACHE_DIR": str(args.work / "stage-cache")}  # a fresh stage cache: cold times
    rows = []
    for name in names:
        print(f"[{time.strftime('%H:%M:%S')}] {name} ...", file=sys.stderr, flush=True)
        rows.append(measure(name, args.work, env))
        print(format_row(rows[-1]), file=sys.stderr, flush=True)
    shutil.rmtree(args.work / "stage-cache", ignore_errors=True)
    text = markdown(rows)
    print(text)
    if not args.no_results and not args.models:
        from benchmarks._results import replace_section

        command = " ".join([".venv/bin/python", "benchmarks/heldout_families.py", *argv])
        body = f"{time.strftime('%Y-%m-%d')}; {versions()}.\nCommand: `{command}`\n\n{__doc__.split(chr(10) * 2)[-1].strip()}\n\n{text}"
        print(f"updated {replace_section(SECTION, body)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
