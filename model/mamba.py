"""Mamba (selective state-space) layer with two interchangeable back ends.

* ``mamba_ssm``: the fused CUDA kernels of the ``mamba-ssm`` package (GPU extra), used when the
  input is on a CUDA device and the package imports.
* ``torch``: a pure-PyTorch chunked selective scan that runs anywhere (see ``selective_scan``):
  chunk summaries, an associative scan over chunks, then all chunks advanced in parallel. Only
  decay factors in (0, 1] are multiplied, never exp(+cumsum), so nothing overflows however long
  the sequence.

Both back ends share the parameter names of ``mamba_ssm.modules.mamba_simple.Mamba`` (in_proj,
conv1d, x_proj, dt_proj, A_log, D, out_proj): one state dict loads in either.
"""
from __future__ import annotations

import functools
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

BACKENDS = ("auto", "torch", "mamba_ssm")


@functools.lru_cache(maxsize=1)
def _mamba_ssm_import() -> tuple[Any, Any, str | None]:  # the kernels carry no type information
    """(selective_scan_fn, causal_conv1d_fn or None, error); imported once, lazily.

    ``import mamba_ssm`` loads CUDA extensions and fails on CPU-only installs, so it must never
    run at module import time.
    """
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception as exc:  # ImportError, or OSError from a CUDA extension
        return None, None, f"{type(exc).__name__}: {exc}"
    try:
        from causal_conv1d import causal_conv1d_fn
    except Exception:
        causal_conv1d_fn = None
    return selective_scan_fn, causal_conv1d_fn, None


def mamba_ssm_available() -> tuple[bool, str]:
    """Whether the fused kernels can run here, and why not."""
    if not torch.cuda.is_available():
        return False, "CUDA is not available"
    fn, _, err = _mamba_ssm_import()
    return (fn is not None, err or "")


def linear_recurrence(a: Tensor, b: Tensor, chunk_size: int = 64) -> Tensor:
    """All states of ``h_t = a_t * h_{t-1} + b_t`` (h_{-1} = 0) along the last dimension.

    ``a`` must lie in [0, 1] (decays); shapes of ``a`` and ``b`` are equal. Work is
    O(L log chunk_size); Python-level steps are O(log chunk_size * log_chunk_size(L)).
    """
    length = a.shape[-1]
    if length <= chunk_size:
        return _hillis_steele(a, b)[1]
    n_chunks = math.ceil(length / chunk_size)
    pad = n_chunks * chunk_size - length
    # Padding at the end with the identity step (a=1, b=0) leaves earlier states unchanged.
    a = F.pad(a, (0, pad), value=1.0).unflatten(-1, (n_chunks, chunk_size))
    b = F.pad(b, (0, pad)).unflatten(-1, (n_chunks, chunk_size))
    decay, local = _hillis_steele(a, b)  # within-chunk cumulative decay and zero-start states
    chunk_end = linear_recurrence(decay[..., -1], local[..., -1], chunk_size)
    carry_in = F.pad(chunk_end[..., :-1], (1, 0))  # state entering each chunk
    h = torch.addcmul(local, decay, carry_in.unsqueeze(-1))
    return h.flatten(-2)[..., :length]


def _hillis_steele(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Inclusive scan of the affine maps h -> a h + b along the last dim (log2 T passes)."""
    length = a.shape[-1]
    step = 1
    while step < length:
        a_prev = F.pad(a[..., :-step], (step, 0), value=1.0)
        b_prev = F.pad(b[..., :-step], (step, 0))
        b = torch.addcmul(b, a, b_prev)
        a = a * a_prev
        step *= 2
    return a, b


def selective_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    chunk_size: int = 64,
) -> Tensor:
    """Pure-PyTorch selective scan with ``selective_scan_fn``'s signature and semantics.

    u, delta, z: (batch, d, L); A: (d, n) real; B, C: (batch, n, L); D, delta_bias: (d,).
    h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t ;  y_t = C_t h_t + D u_t ;  y *= silu(z).
    Half-precision inputs are scanned in float32 (float64 stays float64); returns the input dtype.

    Chunked two-pass scan. The sequence is cut into ``n_chunks`` chunks of T <= chunk_size tokens
    (T ~ sqrt(L)), laid out so that position t of every chunk is one contiguous slice:
      1. every chunk's end state from a zero start, by the recurrence run on all chunks at once
         (T vectorised steps), and its total decay exp(A * sum(delta)) (a sum of log-decays);
      2. the state entering each chunk, by an associative scan over the chunk summaries;
      3. the recurrence again inside all chunks at once, now started from the true states, with
         the output contraction over n done per step so the (b, d, n, L) state tensor is never
         materialised.
    The Python loops therefore run 2T ~ 2 sqrt(L) vectorised steps (not L), and every factor is a
    decay in (0, 1], so nothing overflows.
    """
    if B.dim() != 3 or C.dim() != 3:
        raise ValueError("selective_scan supports input-dependent B and C of shape (batch, n, L) only")
    dtype = u.dtype
    work = torch.promote_types(dtype, torch.float32)
    u, delta, A, B, C = (t.to(work) for t in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.to(work)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    length = u.shape[-1]
    steps = max(1, min(chunk_size, math.ceil(math.sqrt(length))))
    n_chunks = math.ceil(length / steps)
    pad = n_chunks * steps - length

    def by_position(x: Tensor) -> Tensor:  # (..., L) -> (..., T, n_chunks); padding is delta=0: identity steps
        return F.pad(x, (0, pad)).unflatten(-1, (n_chunks, steps)).transpose(-1, -2).contiguous()

    dt = by_position(delta)  # (b, d, T, c)
    du = by_position(delta * u)  # (b, d, T, c)
    Bp = by_position(B)  # (b, n, T, c)
    Cp = by_position(C)
    A4 = A[None, :, :, None]  # (1, d, n, 1)

    def step(h: Tensor | None, t: int) -> Tensor:
        drive = du[:, :, None, t] * Bp[:, None, :, t]  # (b, d, n, c)
        return drive if h is None else torch.addcmul(drive, torch.exp(dt[:, :, None, t] * A4), h)

    h = None
    for t in range(steps):
        h = step(h, t)
    chunk_decay = torch.exp(dt.sum(-2)[:, :, None] * A4)  # (b, d, n, c)
    chunk_end = linear_recurrence(chunk_decay, h, chunk_size)  # type: ignore[arg-type]  # steps >= 1: h is set
    h = F.pad(chunk_end[..., :-1], (1, 0))  # state entering each chunk
    ys = []
    for t in range(steps):
        h = step(h, t)
        ys.append((h * Cp[:, None, :, t]).sum(2))  # 20x faster than einsum for these small slices
    y = torch.stack(ys, -2).transpose(-1, -2).flatten(-2)[..., :length]  # back to (b, d, L)
    if D is not None:
        y = y + u * D.to(work)[:, None]
    if z is not None:
        y = y * F.silu(z.to(work))
    return y.to(dtype)


class Mamba(nn.Module):
    """Mamba block over (batch, L, d_model) sequences; parameter names as in ``mamba_ssm``.

    ``backend``: "auto" (fused kernels for CUDA inputs when ``mamba_ssm`` imports, else torch),
    "torch" (always the pure-PyTorch scan) or "mamba_ssm" (fused kernels, error if unusable).
    The attribute may be changed after construction; the weights are the same either way.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | str = "auto",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_scale: float = 1.0,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        bias: bool = False,
        backend: str = "auto",
        chunk_size: int = 64,
    ) -> None:
        super().__init__()
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.d_model = d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.backend = backend
        self.chunk_size = chunk_size

        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias)
        self.conv1d = nn.Conv1d(
            self.d_inner, self.d_inner, kernel_size=d_conv, groups=self.d_inner, padding=d_conv - 1, bias=conv_bias
        )
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(self.d_inner, 1))
        self.D = nn.Parameter(torch.ones(self.d_inner))
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias)
        # Optimisers should not decay the SSM's own parameters (mamba_ssm convention).
        self.A_log._no_weight_decay = True  # type: ignore[attr-defined]
        self.D._no_weight_decay = True  # type: ignore[attr-defined]
        self._init_dt(dt_min, dt_max, dt_scale, dt_init_floor)

    def _init_dt(self, dt_min: float, dt_max: float, dt_scale: float, floor: float) -> None:
        # Same initialisation as mamba_ssm so that training behaves alike on both back ends:
        # softplus(dt bias) log-uniform in [dt_min, dt_max].
        std = self.dt_rank**-0.5 * dt_scale
        nn.init.uniform_(self.dt_proj.weight, -std, std)
        dt = torch.exp(torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=floor)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus

    def resolve_backend(self, x: Tensor) -> str:
        if self.backend == "torch":
            return "torch"
        ok, why = (False, "input is not on a CUDA device") if not x.is_cuda else mamba_ssm_available()
        if self.backend == "mamba_ssm" and not ok:
            raise RuntimeError(
                f"Mamba backend 'mamba_ssm' requested but unusable ({why}); "
                "install the GPU extra (pip install 'dsm-node[gpu]') on a CUDA machine or use backend='torch'"
            )
        return "mamba_ssm" if ok else "torch"

    def forward(self, hidden: Tensor) -> Tensor:
        """hidden: (batch, L, d_model) -> (batch, L, d_model)."""
        backend = self.resolve_backend(hidden)
        length = hidden.shape[1]
        xz = self.in_proj(hidden).transpose(1, 2)  # (b, 2*d_inner, L)
        x, z = xz.chunk(2, dim=1)
        A = -torch.exp(self.A_log.float())
        scan_fn, conv_fn = selective_scan, None
        if backend == "mamba_ssm":
            scan_fn, conv_fn, _ = _mamba_ssm_import()
        if conv_fn is not None:
            bias = None if self.conv1d.bias is None else self.conv1d.bias.to(x.dtype)
            x = conv_fn(x.contiguous(), self.conv1d.weight.squeeze(1).to(x.dtype), bias, activation="silu")
        else:
            x = F.silu(self.conv1d(x)[..., :length])
        dt, B, C = torch.split(self.x_proj(x.transpose(1, 2)), [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = (dt @ self.dt_proj.weight.t()).transpose(1, 2)  # bias is applied inside the scan
        B = B.transpose(1, 2).contiguous()
        C = C.transpose(1, 2).contiguous()
        kwargs = dict(z=z.contiguous(), delta_bias=self.dt_proj.bias.float(), delta_softplus=True)
        if backend == "mamba_ssm":
            y = scan_fn(x.contiguous(), dt.contiguous(), A, B, C, self.D.float(), **kwargs)
        else:
            y = selective_scan(x, dt, A, B, C, self.D, chunk_size=self.chunk_size, **kwargs)
        return self.out_proj(y.transpose(1, 2))
