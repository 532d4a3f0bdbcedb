"""Mamba mixer (selective state space layer) with two backends and one set of weights.

Same constructor, parameter names, shapes and init as `mamba_ssm.modules.mamba_simple.Mamba`, so a
state dict loads with `strict=True` into mamba_ssm's `Mamba` and mambapy's `MambaBlock`, and back.
- backend "cuda": mamba_ssm's fused kernels on this module's parameters (needs mamba_ssm, CUDA);
  "torch": pure PyTorch, any device; "auto": "cuda" when it can run, else "torch".
- the torch scan, `scan_impl`: "chunked" keeps only the state entering each chunk of `chunk_size`
  steps and recomputes a chunk in a hand-written backward (memory O(T), not O(L)); forward and
  backward are custom ops, so `torch.compile(model, fullgraph=True)` sees one node each.
  "compiled" runs the chunk bodies under torch.compile; "reference" is `selective_scan_ref`.

Math (per channel d of d_inner, state size N; B and C are shared across channels):
    x, z = in_proj(h)                    x = silu(causal_conv1d(x))
    dt, B, C = split(x_proj(x))          delta = softplus(dt_proj(dt)),  A = -exp(A_log)
    h_t = exp(delta_t * A) * h_{t-1} + delta_t * x_t * B_t
    y_t = <h_t, C_t> + D * x_t           out = out_proj(y * silu(z))

Shapes: B batch, L length, D d_model, Dn d_inner (= expand * d_model), N d_state, R dt_rank, T chunk.
"""

from __future__ import annotations

import functools
import importlib
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import BACKENDS, SCAN_IMPLS, _check_choice, _check_ints

CHUNK_SIZE = 32  # steps per chunk of the eager chunked scan
COMPILED_CHUNK_SIZE = 4  # steps per chunk of the compiled scan


# Optional mamba_ssm / causal_conv1d (GPU only). Imported lazily: `import mamba_ssm` fails on a
# CPU-only machine (its interface module imports the compiled extension unconditionally).


def _import(module, *names):
    """({name: object}, None), or (None, reason) when `module` does not import."""
    try:
        mod = importlib.import_module(module)
        return {name: getattr(mod, name) for name in names}, None
    except Exception as err:  # ImportError, but also OSError/RuntimeError from a broken .so
        return None, f"{type(err).__name__}: {err}"


@functools.lru_cache(maxsize=None)
def _mamba_ssm_ops():
    """(ops dict, None) or (None, reason); causal_conv1d's and the decoding kernel are optional
    extras. Cached: a failed import is slow to repeat."""
    ops, reason = _import("mamba_ssm.ops.selective_scan_interface", "mamba_inner_fn", "selective_scan_fn")
    if ops is not None:
        ops.update(_import("causal_conv1d", "causal_conv1d_fn", "causal_conv1d_update")[0] or {})
        ops.update(_import("mamba_ssm.ops.triton.selective_state_update", "selective_state_update")[0] or {})
    return ops, reason


def mamba_ssm_available() -> bool:
    """True if mamba_ssm's selective-scan kernels import (they need a CUDA build)."""
    return _mamba_ssm_ops()[0] is not None


# Selective scan: slow sequential reference and fast chunked version, same signature/semantics
# as mamba_ssm's `selective_scan_ref` / `selective_scan_fn`.


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # fp16/bf16 are scanned in fp32 (like mamba_ssm); fp64 stays fp64 so tests can be tight
    return torch.promote_types(dtype, torch.float32)


def _prepare_delta(delta, delta_bias, delta_softplus):
    # delta : (B, Dn, L), delta_bias : (Dn)
    if delta_bias is not None:
        delta = delta + delta_bias.to(delta.dtype)[..., None]
    if delta_softplus:
        delta = F.softplus(delta)
    return delta


def _skip_and_gate(y, u, D, z):
    # y, u, z : (B, Dn, L), D : (Dn)
    if D is not None:
        y = y + u * D.to(y.dtype)[..., None]
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y


def selective_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       return_last_state=False):
    """Slow, obviously-correct sequential selective scan (autograd through a loop over time).
    u, delta, z : (B, Dn, L), A : (Dn, N), B, C : (B, N, L), D, delta_bias : (Dn) -> out (B, Dn, L)
    [, last_state (B, Dn, N)]. Keeps every state for backward (B*L*Dn*N): for checks only."""
    dtype_in = u.dtype
    dtype = _compute_dtype(dtype_in)
    u, delta, A, B, C = (t.to(dtype) for t in (u, delta, A, B, C))
    delta = _prepare_delta(delta, delta_bias, delta_softplus)
    deltaA = torch.exp(torch.einsum("bdl,dn->lbdn", delta, A))  # (L, B, Dn, N)
    deltaB_u = torch.einsum("bdl,bnl,bdl->lbdn", delta, B, u)  # (L, B, Dn, N)
    h = A.new_zeros(u.shape[0], *A.shape)  # (B, Dn, N)
    ys = []
    # unbind, not deltaA[t]: indexing makes autograd's backward quadratic in L
    for dA_t, dBu_t, C_t in zip(deltaA.unbind(0), deltaB_u.unbind(0), C.unbind(2)):
        h = dA_t * h + dBu_t  # (B, Dn, N)
        ys.append(torch.einsum("bdn,bn->bd", h, C_t))  # (B, Dn)
    y = torch.stack(ys, dim=2)  # (B, Dn, L)
    out = _skip_and_gate(y, u, D, z).to(dtype_in)
    return (out, h) if return_last_state else out


def _scan_chunk(h, u, delta, A, B, C):
    """T steps of the recurrence from state h, forward only: h : (B, Dn, N), u, delta : (B, T, Dn),
    A : (Dn, N), B, C : (B, T, N) -> y : (B, T, Dn), h after the T steps."""
    # Everything of size (B, Dn, N) is made per step, never for the whole chunk at once: one
    # step's tensors stay in cache, a (T, B, Dn, N) deltaA does not. Under torch.compile the T
    # steps become one loop over (b, d) that keeps the chain of states in registers.
    delta_u = delta * u  # (B, T, Dn)
    ys = []
    for delta_t, delta_u_t, B_t, C_t in zip(delta.unbind(1), delta_u.unbind(1), B.unbind(1), C.unbind(1)):
        h = torch.exp(delta_t[..., None] * A) * h + delta_u_t[..., None] * B_t[:, None, :]  # (B, Dn, N)
        ys.append((h * C_t[:, None, :]).sum(-1))  # <h_t, C_t> : (B, Dn)
    return torch.stack(ys, dim=1), h  # (B, T, Dn), (B, Dn, N)


def _scan_chunk_backward(h0, u, delta, A, B, C, grad_y, grad_h, grad_A):
    """Hand-written backward of `_scan_chunk` from h0, the state entering the chunk: recomputes the
    chunk's T states, then walks back through them once. grad_h : gradient of the state leaving the
    chunk, grad_A : (B, Dn, N) accumulated so far. Returns grad_u, grad_delta, grad_A (+ this
    chunk's share), grad_h0, grad_B, grad_C. With g_t = dL/dh_t and a_t = exp(delta_t * A):
        g_t = g_{t+1} * a_{t+1} + grad_y_t * C_t           dL/dC_t = sum_d grad_y_t * h_t
        dL/d(delta_t u_t) = sum_n g_t * B_t                 dL/dB_t = sum_d g_t * delta_t u_t
        X_t = g_t * a_t * h_{t-1} (= a_t * dL/da_t)         dL/ddelta_t += sum_n X_t * A
        dL/dA = sum_{t, b} X_t * delta_t                    dL/dh0 = g_0 * a_0
    """
    # Under torch.compile the sums over n share one loop nest over (b, d) that writes the chunk's
    # per-step states and gradients once; a second one over (b, n) reads them for the sums over d.
    delta_u = delta * u  # (B, T, Dn)
    decays, states = [], [h0]  # a_t, and h_{t-1} at index t: (B, Dn, N) each
    h = h0
    for delta_t, delta_u_t, B_t in zip(delta.unbind(1), delta_u.unbind(1), B.unbind(1)):
        decays.append(torch.exp(delta_t[..., None] * A))
        h = decays[-1] * h + delta_u_t[..., None] * B_t[:, None, :]
        states.append(h)
    g = grad_h
    grad_u, grad_delta, grad_B, grad_C = [], [], [], []
    for t in reversed(range(u.shape[1])):
        grad_y_t = grad_y[:, t, :, None]  # (B, Dn, 1)
        grad_C.append((states[t + 1] * grad_y_t).sum(1))  # (B, N)
        g = g + grad_y_t * C[:, t, None, :]  # dL/dh_t : (B, Dn, N)
        grad_B.append((g * delta_u[:, t, :, None]).sum(1))  # (B, N)
        grad_delta_u = (g * B[:, t, None, :]).sum(-1)  # (B, Dn)
        X = g * decays[t] * states[t]  # (B, Dn, N)
        grad_delta.append((X * A).sum(-1) + u[:, t] * grad_delta_u)
        grad_u.append(delta[:, t] * grad_delta_u)
        grad_A = grad_A + X * delta[:, t, :, None]
        g = g * decays[t]  # dL/dh_{t-1}
    return (torch.stack(grad_u[::-1], 1), torch.stack(grad_delta[::-1], 1), grad_A, g,
            torch.stack(grad_B[::-1], 1), torch.stack(grad_C[::-1], 1))


# Inductor knobs for the unrolled chunk: fuse without a size limit and recompute cheap values
# instead of storing every intermediate (B, Dn, N) tensor to memory.
_INDUCTOR_OPTIONS = {"max_fusion_size": 4096, "realize_reads_threshold": 100}


@functools.lru_cache(maxsize=None)
def _compiled(fn):
    # Compiled lazily, once per function (a cold compile is slow and needs a C compiler). Chunks
    # all have one shape (L is padded): it recompiles per batch size and dtype, not per chunk.
    import torch._inductor.config as inductor_config

    options = {k: v for k, v in _INDUCTOR_OPTIONS.items() if hasattr(inductor_config, k)}
    return torch.compile(fn, dynamic=False, options=options)


# The chunked scan is two custom ops (forward, backward): torch.compile(model, fullgraph=True)
# sees each as one opaque node, so the graph does not break and the T-step Python loops are not
# unrolled into it (tracing them costs minutes at L = 256). Eager, they run the code above.
_Tensor = torch.Tensor


@torch.library.custom_op("pixelbyte::chunked_scan", mutates_args=())
def _chunked_scan(u: _Tensor, delta: _Tensor, A: _Tensor, B: _Tensor, C: _Tensor, chunk_size: int,
                  compile_chunk: bool) -> tuple[_Tensor, _Tensor, _Tensor]:
    """Forward: walks the chunks, keeps only the state entering each one (for backward). u, delta :
    (B, L, Dn), A : (Dn, N), B, C : (B, L, N), L a multiple of T -> y : (B, L, Dn) (no D skip, no
    gate), last_state : (B, Dn, N), states : (nc, B, Dn, N)."""
    scan_chunk = _compiled(_scan_chunk) if compile_chunk else _scan_chunk
    h = u.new_zeros(u.shape[0], u.shape[2], A.shape[1])  # (B, Dn, N)
    states, ys = [], []
    for start in range(0, u.shape[1], chunk_size):
        sl = slice(start, start + chunk_size)
        states.append(h)
        y, h = scan_chunk(h, u[:, sl], delta[:, sl], A, B[:, sl], C[:, sl])
        ys.append(y)
    return torch.cat(ys, dim=1), h.contiguous(), torch.stack(states)


@_chunked_scan.register_fake
def _(u, delta, A, B, C, chunk_size, compile_chunk):
    batch, L, dim = u.shape
    return (u.new_empty(batch, L, dim), u.new_empty(batch, dim, A.shape[1]),
            u.new_empty(L // chunk_size, batch, dim, A.shape[1]))


@torch.library.custom_op("pixelbyte::chunked_scan_backward", mutates_args=())
def _chunked_scan_backward(u: _Tensor, delta: _Tensor, A: _Tensor, B: _Tensor, C: _Tensor,
                           states: _Tensor, grad_y: _Tensor, grad_last_state: _Tensor, chunk_size: int,
                           compile_chunk: bool) -> tuple[_Tensor, _Tensor, _Tensor, _Tensor, _Tensor]:
    """Backward: walks the chunks in reverse, recomputing each from its saved entering state
    (`_scan_chunk_backward`); peak memory is one chunk's states, O(T*B*Dn*N), not O(L*B*Dn*N).
    No autograd formula of its own: double backward is an error, not a wrong answer."""
    T = chunk_size
    grad_u, grad_delta, grad_B, grad_C = (t.new_empty(t.shape) for t in (u, delta, B, C))
    grad_A = torch.zeros_like(states[0])  # (B, Dn, N), summed over the batch at the end
    grad_y, grad_h = grad_y.contiguous(), grad_last_state.contiguous()
    scan_chunk_backward = _compiled(_scan_chunk_backward) if compile_chunk else _scan_chunk_backward
    for k in reversed(range(states.shape[0])):
        sl = slice(k * T, (k + 1) * T)
        (grad_u[:, sl], grad_delta[:, sl], grad_A, grad_h, grad_B[:, sl], grad_C[:, sl]) = \
            scan_chunk_backward(states[k], u[:, sl], delta[:, sl], A, B[:, sl], C[:, sl],
                                grad_y[:, sl], grad_h, grad_A)
    return grad_u, grad_delta, grad_A.sum(0), grad_B, grad_C


@_chunked_scan_backward.register_fake
def _(u, delta, A, B, C, states, grad_y, grad_last_state, chunk_size, compile_chunk):
    return tuple(t.new_empty(t.shape) for t in (u, delta, A, B, C))


def _chunked_scan_setup(ctx, inputs, output):
    u, delta, A, B, C, ctx.chunk_size, ctx.compile_chunk = inputs
    ctx.save_for_backward(u, delta, A, B, C, output[2])


def _chunked_scan_grad(ctx, grad_y, grad_last_state, _grad_states):
    # grad_y : (B, L, Dn), grad_last_state : (B, Dn, N) (zeros if last_state was unused)
    grads = _chunked_scan_backward(*ctx.saved_tensors, grad_y, grad_last_state, ctx.chunk_size, ctx.compile_chunk)
    return (*(g if need else None for g, need in zip(grads, ctx.needs_input_grad)), None, None)


_chunked_scan.register_autograd(_chunked_scan_grad, setup_context=_chunked_scan_setup)


def _scan_chunked(u, delta, A, B, C, chunk_size=32, compile_chunk=False):
    """The chunked scan on (B, L, .) tensors, L padded to a multiple of the chunk with delta = 0:
    exp(0*A) = 1 and delta*u*B = 0, so the state passes through the padding unchanged (the last
    state is exact) and every chunk has one shape (no torch.compile recompiles)."""
    L = u.shape[1]
    if not compile_chunk:        # eager chunks may have any length: a short sequence is one chunk
        chunk_size = max(1, min(chunk_size, L))
    pad = (-L) % chunk_size
    if pad:
        u, delta, B, C = (F.pad(t, (0, 0, 0, pad)) for t in (u, delta, B, C))
    y, h, _ = _chunked_scan(u, delta, A.contiguous(), B, C, chunk_size, compile_chunk)
    return y[:, :L], h


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False, *, chunk_size=32, compile_chunk=False):
    """Fast selective scan (the chunked custom ops): same signature, shapes and semantics as
    `selective_scan_ref`."""
    dtype_in = u.dtype
    dtype = _compute_dtype(dtype_in)
    u, delta, A, B, C = (t.to(dtype) for t in (u, delta, A, B, C))
    delta = _prepare_delta(delta, delta_bias, delta_softplus)
    # (B, ., L) -> (B, L, .), the layout of the scan's chunks
    u_, delta_, B_, C_ = (t.transpose(1, 2).contiguous() for t in (u, delta, B, C))
    y, last_state = _scan_chunked(u_, delta_, A, B_, C_, chunk_size, compile_chunk)
    y = y.transpose(1, 2)  # (B, L, Dn) -> (B, Dn, L)
    out = _skip_and_gate(y, u, D, z).to(dtype_in)
    return (out, last_state) if return_last_state else out


# What the Mamba and Mamba-2 (pixelbyte/mamba2.py) mixers share


def dt_bias_init(n, dt_min, dt_max, dt_init_floor, device=None):
    """softplus^-1(dt) with dt log-uniform in [dt_min, dt_max] (clamped >= dt_init_floor), for
    n channels (Mamba) or heads (Mamba-2): softplus(x + bias) then starts in that range."""
    log_dt = torch.rand(n, device=device) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
    dt = torch.exp(log_dt).clamp(min=dt_init_floor)
    return dt + torch.log(-torch.expm1(-dt))  # softplus^-1, stable for small dt


def causal_conv1d(x, weight, bias=None):
    """Depthwise causal conv over time, as nn.Conv1d(groups=channels, padding=K-1) keeping the first
    L outputs: x : (B, L, Dc), weight : (Dc, 1, K), bias : (Dc) -> (B, L, Dc). K shifted
    multiply-adds instead of nn.Conv1d: no transposes to channels-first and back."""
    seqlen, width = x.shape[1], weight.shape[-1]
    x = F.pad(x, (0, 0, width - 1, 0))  # (B, K - 1 + L, Dc), zeros before t = 0
    weight = weight[:, 0]  # (Dc, K); tap K - 1 multiplies x_t
    out = x[:, :seqlen] * weight[:, 0]
    for k in range(1, width):
        out = torch.addcmul(out, x[:, k:k + seqlen], weight[:, k])
    return out if bias is None else out + bias


class _Mixer(nn.Module):
    """Base of Mamba and Mamba2: argument checks, backend choice, the conv and decoding states.
    Subclasses set `_ops` (their kernels' loader) and `_ops_needs` (what the error names)."""

    def _check_backend(self, scan_impls):
        _check_choice(self, "backend", BACKENDS)
        _check_choice(self, "scan_impl", scan_impls)
        _check_ints(self, ["chunk_size"], 1, optional=True)

    def _use_cuda_kernels(self, x: torch.Tensor) -> bool:
        # "torch" never, "auto" when x is on CUDA and the kernels import, "cuda" always (or an error)
        if self.backend != "cuda":
            return self.backend == "auto" and x.is_cuda and self._ops()[0] is not None
        name = type(self).__name__
        if self._ops()[0] is None:
            raise RuntimeError(f"{name}(backend='cuda') needs the mamba_ssm package with its {self._ops_needs}; "
                               f"import failed: {self._ops()[1]}. Use backend='torch' or 'auto'.")
        if not x.is_cuda:
            raise RuntimeError(f"{name}(backend='cuda') needs CUDA tensors, got input on device '{x.device}'. "
                               "Move the model and input to CUDA or use backend='torch' or 'auto'.")
        return True

    def _ssm_inputs(self, dt_bias, x, dt, B, C):
        # in the scan's dtype (fp16/bf16 -> fp32): x, delta = softplus(dt + dt_bias), A = -exp(A_log), B, C, D
        dtype = _compute_dtype(x.dtype)
        x, dt, B, C = (t.to(dtype) for t in (x, dt, B, C))
        A = -torch.exp(self.A_log.to(dtype))
        return x, F.softplus(dt + dt_bias.to(dtype)), A, B, C, self.D.to(dtype)

    def _conv(self, x, inference_cache, conv):
        # x : (B, L, Dc) -> silu(conv(x)); prefill: the conv state is the last d_conv raw inputs,
        # zero-padded on the left if L < d_conv
        if inference_cache is not None:
            inference_cache[0].copy_(F.pad(x, (0, 0, self.d_conv - x.shape[1], 0)).transpose(1, 2))
        return F.silu(conv(x, self.conv1d.weight, self.conv1d.bias))

    def _conv_step(self, x, conv_state, ops=None):
        # one token of `_conv`: x : (B, Dc) -> (B, Dc); conv_state : (B, Dc, d_conv), the last
        # d_conv raw inputs, is shifted and updated in place
        weight, bias = self.conv1d.weight, self.conv1d.bias
        if ops is not None and ops.get("causal_conv1d_update") is not None:
            return ops["causal_conv1d_update"](x, conv_state, weight.squeeze(1), bias, "silu")
        conv_state.copy_(torch.roll(conv_state, shifts=-1, dims=-1))  # drop the oldest input
        conv_state[:, :, -1] = x
        x = (conv_state * weight[:, 0]).sum(-1)  # (B, Dc)
        return F.silu(x if bias is None else x + bias)

    def _check_step(self, hidden_states):
        if hidden_states.dim() != 3 or hidden_states.shape[1] != 1:
            raise ValueError(f"{type(self).__name__}.step decodes one token at a time: got hidden_states of "
                             f"shape {tuple(hidden_states.shape)}, expected (B, 1, {self.d_model})")

    def allocate_inference_cache(self, batch_size, max_seqlen=None, dtype=None, **kwargs):
        """Zero states for `step`: conv_state (B, conv channels, d_conv), ssm_state (B, *ssm_shape)
        (``max_seqlen``: unused, the state does not grow; kept for mamba_ssm's API)."""
        conv, proj = self.conv1d.weight, self.in_proj.weight
        conv_state = conv.new_zeros(batch_size, conv.shape[0], self.d_conv, dtype=dtype or conv.dtype)
        ssm_state = proj.new_zeros(batch_size, *self.ssm_shape, dtype=dtype or proj.dtype)
        return conv_state, ssm_state


class Mamba(_Mixer):
    """Mamba mixer: (B, L, D) -> (B, L, D), parameters identical to mamba_ssm's `Mamba`.
    ``backend`` and ``scan_impl``: see the module docstring; ``chunk_size``: steps per chunk of
    the torch scan (None: CHUNK_SIZE, or COMPILED_CHUNK_SIZE for "compiled")."""

    _ops = staticmethod(_mamba_ssm_ops)
    _ops_needs = "CUDA kernels (pip install mamba-ssm causal-conv1d)"

    def __init__(self, d_model, d_state=16, d_conv=4, expand=2, dt_rank="auto", dt_min=0.001,
                 dt_max=0.1, dt_init_floor=1e-4, bias=False, conv_bias=True, backend="auto",
                 chunk_size=None, device=None, dtype=None, scan_impl="chunked"):
        super().__init__()
        self.backend, self.chunk_size, self.scan_impl = backend, chunk_size, scan_impl
        self._check_backend(SCAN_IMPLS)
        if chunk_size is None:
            self.chunk_size = COMPILED_CHUNK_SIZE if scan_impl == "compiled" else CHUNK_SIZE
        factory_kwargs = {"device": device, "dtype": dtype}
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else dt_rank
        self.ssm_shape = (self.d_inner, d_state)

        # x and z branches in one matmul: (B, L, D) -> (B, L, 2*Dn)
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias, **factory_kwargs)
        # depthwise causal conv over time: pad both sides by d_conv-1, keep the first L outputs
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, kernel_size=d_conv, groups=self.d_inner,
                                padding=d_conv - 1, bias=conv_bias, **factory_kwargs)
        # input-dependent dt (low rank R), B and C: (B, L, Dn) -> (B, L, R + 2N)
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False, **factory_kwargs)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True, **factory_kwargs)
        dt_init_std = self.dt_rank ** -0.5  # U(+-R^-0.5) keeps the variance of dt_proj's output ~1
        nn.init.uniform_(self.dt_proj.weight, -dt_init_std, dt_init_std)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt_bias_init(self.d_inner, dt_min, dt_max, dt_init_floor,
                                                 self.dt_proj.bias.device))
        self.dt_proj.bias._no_reinit = True  # a generic "zero all biases" init must skip it

        # S4D-real init A = -(1..N) per channel; stored as log so that A = -exp(A_log) stays < 0.
        # A_log and D stay fp32 whatever `dtype` is, like upstream (they are tiny and sensitive).
        A = torch.arange(1, d_state + 1, dtype=torch.float32, device=device).repeat(self.d_inner, 1)
        self.A_log = nn.Parameter(torch.log(A))  # (Dn, N)
        self.A_log._no_weight_decay = True
        self.D = nn.Parameter(torch.ones(self.d_inner, device=device))  # (Dn) skip connection
        self.D._no_weight_decay = True

        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **factory_kwargs)

    def forward(self, hidden_states, inference_cache=None):
        """hidden_states : (B, L, D) -> (B, L, D). ``inference_cache`` (conv_state, ssm_state) from
        `allocate_inference_cache`, if given, is filled with the states after the last token."""
        if self._use_cuda_kernels(hidden_states):
            return self._forward_cuda(hidden_states, inference_cache)
        x, z = self.in_proj(hidden_states).chunk(2, dim=-1)  # (B, L, Dn), (B, L, Dn)
        x = self._conv(x, inference_cache, causal_conv1d)  # (B, L, Dn)
        dt, B, C = torch.split(self.x_proj(x), [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.linear(dt, self.dt_proj.weight)  # (B, L, Dn); bias is added in _ssm_torch
        y, last_state = self._ssm_torch(x, dt, B, C)  # (B, L, Dn), (B, Dn, N)
        if inference_cache is not None:
            inference_cache[1].copy_(last_state)
        return self.out_proj(y.to(z.dtype) * F.silu(z))  # (B, L, D)

    def _ssm_torch(self, x, dt, B, C):
        # x, dt : (B, L, Dn), B, C : (B, L, N) -> y : (B, L, Dn), last_state : (B, Dn, N)
        x, delta, A, B, C, D = self._ssm_inputs(self.dt_proj.bias, x, dt, B, C)
        if self.scan_impl == "reference":
            y, last_state = selective_scan_ref(x.transpose(1, 2), delta.transpose(1, 2), A, B.transpose(1, 2),
                                               C.transpose(1, 2), return_last_state=True)
            y = y.transpose(1, 2)
        else:
            y, last_state = _scan_chunked(x, delta, A, B, C, self.chunk_size,
                                          compile_chunk=self.scan_impl == "compiled")
        return y + x * D, last_state

    def _forward_cuda(self, hidden_states, inference_cache=None):
        # As mamba_simple.Mamba.forward: the fused kernels take our own parameters, so both
        # backends share one set of weights.
        ops = self._ops()[0]
        batch, seqlen, dim = hidden_states.shape
        # matmul and transpose (B, L, D) -> (B, 2*Dn, L) at once, as upstream
        xz = self.in_proj.weight @ hidden_states.reshape(batch * seqlen, dim).t()  # (2Dn, B*L)
        xz = xz.view(-1, batch, seqlen).transpose(0, 1)  # (B, 2*Dn, L)
        if self.in_proj.bias is not None:
            xz = xz + self.in_proj.bias.to(dtype=xz.dtype)[:, None]
        A = -torch.exp(self.A_log.float())  # (Dn, N)
        if ops.get("causal_conv1d_fn") is not None and inference_cache is None:
            return ops["mamba_inner_fn"](
                xz, self.conv1d.weight, self.conv1d.bias, self.x_proj.weight, self.dt_proj.weight,
                self.out_proj.weight, self.out_proj.bias, A, None, None, self.D.float(),
                delta_bias=self.dt_proj.bias.float(), delta_softplus=True)
        # upstream's unfused path: no causal_conv1d, or the states are wanted (prefill)
        x, z = xz.chunk(2, dim=1)  # (B, Dn, L)
        if inference_cache is not None:
            inference_cache[0].copy_(F.pad(x, (self.d_conv - seqlen, 0)))
        x = F.silu(self.conv1d(x)[..., :seqlen])  # (B, Dn, L)
        x_dbl = self.x_proj(x.transpose(1, 2).reshape(batch * seqlen, -1))  # (B*L, R+2N)
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = (self.dt_proj.weight @ dt.t()).view(-1, batch, seqlen).transpose(0, 1)  # (B, Dn, L)
        B = B.view(batch, seqlen, -1).transpose(1, 2).contiguous()  # (B, N, L)
        C = C.view(batch, seqlen, -1).transpose(1, 2).contiguous()  # (B, N, L)
        y = ops["selective_scan_fn"](x, dt, A, B, C, self.D.float(), z=z,
                                     delta_bias=self.dt_proj.bias.float(), delta_softplus=True,
                                     return_last_state=inference_cache is not None)
        if inference_cache is not None:
            y, last_state = y
            inference_cache[1].copy_(last_state)
        return self.out_proj(y.transpose(1, 2))  # (B, L, D)

    def step(self, hidden_states, conv_state, ssm_state):
        """One token: hidden_states (B, 1, D) -> (out (B, 1, D), conv_state, ssm_state), the states
        updated in place."""
        self._check_step(hidden_states)
        ops = self._ops()[0] if self._use_cuda_kernels(hidden_states) else None
        x, z = self.in_proj(hidden_states.squeeze(1)).chunk(2, dim=-1)  # (B, Dn), (B, Dn)
        x = self._conv_step(x, conv_state, ops)  # (B, Dn)
        dt, B, C = torch.split(self.x_proj(x), [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.linear(dt, self.dt_proj.weight)  # (B, Dn), no bias yet
        if ops is not None and ops.get("selective_state_update") is not None:
            y = ops["selective_state_update"](ssm_state, x, dt, -torch.exp(self.A_log.float()), B, C, self.D,
                                              z=z, dt_bias=self.dt_proj.bias, dt_softplus=True)
        else:
            x, delta, A, B, C, D = self._ssm_inputs(self.dt_proj.bias, x, dt, B, C)
            h = ssm_state.to(x.dtype) * torch.exp(delta.unsqueeze(-1) * A) \
                + (delta * x).unsqueeze(-1) * B.unsqueeze(1)  # (B, Dn, N)
            ssm_state.copy_(h)
            y = ((h @ C.unsqueeze(-1)).squeeze(-1) + x * D) * F.silu(z.to(x.dtype))  # (B, Dn)
        return self.out_proj(y.to(hidden_states.dtype)).unsqueeze(1), conv_state, ssm_state
