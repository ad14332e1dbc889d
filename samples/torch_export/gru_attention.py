"""A sequence model with a GRU and multi-head self-attention over a dynamic batch and width.

The shape of a CRNN head: a conv stem over an image strip, the height averaged away, then a
bidirectional GRU and multi-head self-attention along the width.

What torch 2.13's exporters do with it (found by ``trtforge export``'s verification):
- dynamo exports ``nn.GRU`` with the sequence length of the traced example hard-coded
  downstream: its model runs only at that width;
- TorchScript tracing exports ``nn.GRU`` as an ONNX GRU that runs at every width, but bakes
  ``nn.MultiheadAttention``'s Python-int shape arithmetic (``view(tgt_len, bsz * heads, ...)``)
  into constants.
So ``build()`` uses ``SelfAttention``, multi-head attention written with shape-agnostic ops
(``unflatten``/``flatten``, ``scaled_dot_product_attention``), which exports and verifies at
every width; ``build_torch_mha()`` keeps ``nn.MultiheadAttention`` and is refused (exit 1).

    trtforge export samples/torch_export/gru_attention.py:build -o seq.onnx --shapes 'x:1x3x8x16,2x3x8x48,8x3x8x160'
"""

from __future__ import annotations

import torch
from torch import nn

SHAPES = "x:1x3x8x16,2x3x8x48,8x3x8x160"


class SelfAttention(nn.Module):
    """Multi-head self-attention (batch first) whose every reshape is relative to its input's shape."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.in_proj = nn.Linear(dim, 3 * dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qkv = self.in_proj(x).unflatten(-1, (3, self.heads, -1)).permute(2, 0, 3, 1, 4)  # (3, B, H, T, D)
        attended = nn.functional.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.out_proj(attended.transpose(1, 2).flatten(2))


class GruAttention(nn.Module):
    def __init__(self, channels: int = 16, hidden: int = 16, heads: int = 4, classes: int = 10, torch_mha: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, channels, 3, padding=1)
        self.gru = nn.GRU(channels, hidden, batch_first=True, bidirectional=True)
        self.torch_mha = torch_mha
        if torch_mha:
            self.attention = nn.MultiheadAttention(2 * hidden, heads, batch_first=True)
        else:
            self.attention = SelfAttention(2 * hidden, heads)
        self.fc = nn.Linear(2 * hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seq = torch.relu(self.conv(x)).mean(dim=2).transpose(1, 2)  # (batch, width, channels)
        seq, _ = self.gru(seq)
        if self.torch_mha:
            attended, _ = self.attention(seq, seq, seq, need_weights=False)
        else:
            attended = self.attention(seq)
        return self.fc(attended + seq)


def build() -> nn.Module:
    torch.manual_seed(0)
    return GruAttention().eval()


def build_torch_mha() -> nn.Module:
    torch.manual_seed(0)
    return GruAttention(torch_mha=True).eval()
