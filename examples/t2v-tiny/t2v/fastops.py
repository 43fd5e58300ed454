"""Linear layers and attention that run through oneDNN (MKL-DNN).

Debian's torch 1.13 is built against the reference BLAS: torch.mm, bmm and
nn.Linear run at about 5 GFLOPS on this machine, while oneDNN's inner
product and convolutions run at 60 to 200. So the model's matmuls go
through torch._C._nn.mkldnn_linear (with a backward of our own) and the
attention's two batched matmuls through grouped 1-D convolutions. Where
oneDNN is missing, plain torch is used; the results agree to float32
rounding.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

ONEDNN = bool(torch.backends.mkldnn.is_available() and hasattr(torch._C._nn, "mkldnn_linear"))


def _mm_nt(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a [M, K] @ b[N, K].T -> [M, N]."""
    if not ONEDNN:
        return a @ b.t()
    return torch._C._nn.mkldnn_linear(a.contiguous().to_mkldnn(), b.contiguous().to_mkldnn(), None).to_dense()


class _LinearFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, b):
        ctx.save_for_backward(x, w)
        return _mm_nt(x, w) + b

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        g = g.contiguous()
        gx = _mm_nt(g, w.t()) if ctx.needs_input_grad[0] else None
        gw = _mm_nt(g.t(), x.t()) if ctx.needs_input_grad[1] else None
        gb = g.sum(0) if ctx.needs_input_grad[2] else None
        return gx, gw, gb


class Linear(nn.Module):
    """nn.Linear's maths and initialisation, run through oneDNN."""

    def __init__(self, d_in: int, d_out: int, zero: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(d_out, d_in))
        self.bias = nn.Parameter(torch.zeros(d_out))
        if zero:
            nn.init.zeros_(self.weight)
        else:
            nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
            bound = 1 / math.sqrt(d_in)
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        y = _LinearFn.apply(x.reshape(-1, shape[-1]), self.weight, self.bias)
        return y.reshape(*shape[:-1], y.shape[-1])


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias=None) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + bias) v for q [G, N, d], k and v [G, M, d]."""
    G, N, d = q.shape
    M = k.shape[1]
    q = (q * (d ** -0.5)).contiguous()
    if ONEDNN:
        # out[g*N+n, m] = sum_c q[g, n, c] k[g, m, c]
        s = F.conv1d(k.transpose(1, 2).reshape(1, G * d, M), q.reshape(G * N, d, 1), groups=G).reshape(G, N, M)
    else:
        s = torch.bmm(q, k.transpose(1, 2))
    if bias is not None:
        s = s + bias
    a = s.softmax(-1)
    if ONEDNN:
        # out[g*N+n, e] = sum_m a[g, n, m] v[g, m, e]
        return F.conv1d(v.contiguous().reshape(1, G * M, d), a.reshape(G * N, M, 1), groups=G).reshape(G, N, d)
    return torch.bmm(a, v)
