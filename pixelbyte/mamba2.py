"""Mamba-2 mixer (SSD: state space duality) with two backends and one set of weights.

Same constructor, parameter names, shapes and init as `mamba_ssm.modules.mamba2.Mamba2` with its
default options (rmsnorm, norm_before_gate=False, D per head): state dicts load both ways, strict.
- backend "cuda": mamba_ssm's Triton SSD kernel for the scan, this module's torch code around it;
  "torch": pure PyTorch, any device; "auto": "cuda" when it can run, else "torch".
- the torch scan: `ssd_chunked`, matmuls over chunks (plain autograd is fast);
  `scan_impl="reference"` runs the sequential `ssd_ref` instead.

Math (per head h of H = d_inner / headdim, channels p of headdim P, state size N; B and C are
shared by the heads of a group, ngroups G; the decay is one scalar per head and token):
    z, xBC, dt = split(in_proj(u))      x, B, C = split(silu(causal_conv1d(xBC)))
    dt = softplus(dt + dt_bias)         A = -exp(A_log)                     (A < 0, per head)
    h_t = exp(dt_t * A) * h_{t-1} + dt_t * x_t B_t^T       h : (P, N) per head
    y_t = h_t C_t + D * x_t             out = out_proj(rmsnorm(y * silu(z)) * norm.weight)

Shapes: B batch, L length, D d_model, Dn d_inner (= expand * d_model), H heads, P headdim,
G ngroups, N d_state, T chunk size, nc = L / T chunks.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .config import _check_ints, _fail
from .config import MAMBA2_SCAN_IMPLS as SCAN_IMPLS
from .mamba import _compute_dtype, _import, _Mixer, dt_bias_init

CHUNK_SIZE = 32  # tokens per chunk of the torch SSD (the fastest on a CPU)
CUDA_CHUNK_SIZE = 256  # mamba_ssm's default for its Triton kernels


@functools.lru_cache(maxsize=None)
def _mamba2_ops():
    """mamba_ssm's Triton SSD kernel (GPU only, imported lazily): (ops dict, None) or (None, reason).
    Cached: a failed import is slow to repeat."""
    return _import("mamba_ssm.ops.triton.ssd_combined", "mamba_chunk_scan_combined")


def mamba2_ssm_available() -> bool:
    """True if mamba_ssm's SSD kernel imports (it needs a CUDA build with Triton)."""
    return _mamba2_ops()[0] is not None


# SSD scan: sequential reference, the minimal SSD of the Mamba-2 paper, and the fast chunked
# version, all with one signature. Inputs (dt after softplus):
#   x : (B, L, H, P), dt : (B, L, H), A : (H), B, C : (B, L, G, N), D : (H),
#   initial_state : (B, H, P, N)  ->  y : (B, L, H, P), last_state : (B, H, P, N)
# Head h reads group h // (H // G) of B and C (mamba_ssm's convention).


def _check_ssd_shapes(x, dt, A, B, C):
    batch, seqlen, nheads, _ = x.shape
    ngroups = B.shape[2]
    if dt.shape != (batch, seqlen, nheads) or A.shape != (nheads,) or B.shape != C.shape \
            or B.shape[:2] != (batch, seqlen) or nheads % ngroups:
        raise ValueError(f"SSD: expected x (B, L, H, P), dt (B, L, H), A (H), B = C (B, L, G, N) "
                         f"with G dividing H; got x {tuple(x.shape)}, dt {tuple(dt.shape)}, "
                         f"A {tuple(A.shape)}, B {tuple(B.shape)}, C {tuple(C.shape)}")


def _heads(t, nheads):
    # (B, L, G, N) -> (B, L, H, N): each head gets its group's B or C
    return t.repeat_interleave(nheads // t.shape[2], dim=2)


def ssd_ref(x, dt, A, B, C, D=None, initial_state=None):
    """Slow, obviously-correct SSD: the recurrence h_t = exp(dt_t * A) h_{t-1} + dt_t x_t B_t^T,
    y_t = h_t C_t + D x_t, one token at a time (autograd through a loop)."""
    _check_ssd_shapes(x, dt, A, B, C)
    batch, _, nheads, headdim = x.shape
    B, C = _heads(B, nheads), _heads(C, nheads)  # (B, L, H, N)
    h = x.new_zeros(batch, nheads, headdim, B.shape[-1]) if initial_state is None else initial_state
    ys = []
    # unbind, not [:, t]: indexing makes autograd's backward quadratic in L
    for x_t, dt_t, B_t, C_t in zip(x.unbind(1), dt.unbind(1), B.unbind(1), C.unbind(1)):
        decay = torch.exp(dt_t * A)[..., None, None]  # (B, H, 1, 1)
        h = decay * h + (dt_t[..., None] * x_t)[..., None] * B_t[:, :, None, :]  # (B, H, P, N)
        ys.append((h @ C_t[..., None]).squeeze(-1))  # (B, H, P)
    y = torch.stack(ys, dim=1)  # (B, L, H, P)
    if D is not None:
        y = y + x * D[:, None]
    return y, h


def segsum(a):
    """a : (..., T) -> (..., T, T) with out[..., i, j] = a[j+1] + ... + a[i] for j <= i, -inf above
    the diagonal: exp(segsum(log decay)) is the matrix of decays from step j to step i.
    Sums of masked copies, not differences of a cumsum: no cancellation (Mamba-2 paper)."""
    T = a.shape[-1]
    ones = torch.ones(T, T, dtype=torch.bool, device=a.device)
    terms = a[..., :, None].expand(*a.shape, T).masked_fill(~ones.tril(-1), 0)  # [i, j] = a[i] if i > j
    sums = terms.cumsum(dim=-2)  # [i, j] = a[j+1] + ... + a[i]
    return sums.masked_fill(~ones.tril(), -math.inf)


def ssd_minimal(x, dt, A, B, C, D=None, initial_state=None, chunk_size=16):
    """The minimal SSD of the Mamba-2 paper (its Listing 1, "ssd_minimal_discrete"): segsum and
    four einsums over chunks, a second oracle for `ssd_chunked`. L must be a multiple of the chunk.
    Written with X = dt * x and log-decays a = dt * A, as in the paper."""
    _check_ssd_shapes(x, dt, A, B, C)
    batch, seqlen, nheads, headdim = x.shape
    T = chunk_size
    if seqlen % T:
        raise ValueError(f"ssd_minimal: L={seqlen} must be a multiple of chunk_size={T}")

    def chunks(t):  # (B, L, ...) -> (B, nc, T, ...)
        return t.reshape(batch, seqlen // T, T, *t.shape[2:])

    X, Bh, Ch = chunks(x * dt[..., None]), chunks(_heads(B, nheads)), chunks(_heads(C, nheads))
    a = chunks(dt * A).permute(0, 3, 1, 2)  # (B, H, nc, T)
    a_cum = a.cumsum(-1)  # (B, H, nc, T)

    # 1. within chunks (diagonal blocks): y_i = sum_{j <= i} C_i.B_j decay(j -> i) X_j
    y_diag = torch.einsum("bclhn,bcshn,bhcls,bcshp->bclhp", Ch, Bh, torch.exp(segsum(a)), X)
    # 2. the state each chunk leaves, from its own tokens: sum_j decay(j -> end) X_j B_j^T
    decay_to_end = torch.exp(a_cum[..., -1:] - a_cum)  # (B, H, nc, T)
    states = torch.einsum("bclhn,bhcl,bclhp->bchpn", Bh, decay_to_end, X)
    # 3. pass the states between chunks: state entering chunk c, from every earlier chunk
    if initial_state is None:
        initial_state = x.new_zeros(batch, nheads, headdim, B.shape[-1])
    states = torch.cat([initial_state[:, None], states], dim=1)  # (B, nc + 1, H, P, N)
    decay_chunks = torch.exp(segsum(F.pad(a_cum[..., -1], (1, 0))))  # (B, H, nc + 1, nc + 1)
    states = torch.einsum("bhzc,bchpn->bzhpn", decay_chunks, states)
    states, last_state = states[:, :-1], states[:, -1]
    # 4. each chunk's entering state read out by C with the decay from the chunk start
    y_off = torch.einsum("bclhn,bchpn,bhcl->bclhp", Ch, states, torch.exp(a_cum))
    y = (y_diag + y_off).reshape(batch, seqlen, nheads, headdim)
    if D is not None:
        y = y + x * D[:, None]
    return y, last_state


def ssd_chunked(x, dt, A, B, C, D=None, initial_state=None, chunk_size=CHUNK_SIZE):
    """Fast SSD (same signature and result as `ssd_ref`) laid out for batched matmuls; any L, padded
    to a multiple of the chunk with dt = 0 (exp(0 * A) = 1 and dt * x = 0: the state is unchanged).
    Per chunk of T tokens, with a_cum the running sum of dt * A inside the chunk:
        y_diag = ((C B^T) * exp(a_cum_i - a_cum_j) [j <= i]) (dt x)    within the chunk
        S_c    = B^T (exp(a_cum_T - a_cum_j) dt x)                      state the chunk adds
        h_c+1  = exp(a_cum_T) h_c + S_c                                 between chunks (loop)
        y_off  = exp(a_cum_i) C h_c                                     entering state's share
    The heads of a group share B and C, so S_c and y_off are one matmul per group; only y_diag is
    per head. States are (N, heads*P) per group inside, (H, P, N) outside (mamba_ssm's layout).
    """
    _check_ssd_shapes(x, dt, A, B, C)
    batch, seqlen, nheads, headdim = x.shape
    ngroups, dstate = B.shape[2:]
    hpg = nheads // ngroups  # heads per group
    T = chunk_size
    pad = (-seqlen) % T
    if pad:
        x, dt, B, C = (F.pad(t, (0, 0) * (t.dim() - 2) + (0, pad)) for t in (x, dt, B, C))
    nc = x.shape[1] // T

    xdt = x * dt[..., None]  # dt_j x_j : (B, L', H, P)
    a_cum = (dt * A).reshape(batch, nc, T, nheads).cumsum(2)  # (B, nc, T, H)
    Bc = B.reshape(batch, nc, T, ngroups, dstate).transpose(2, 3)  # (B, nc, G, T, N)
    Cc = C.reshape(batch, nc, T, ngroups, dstate).transpose(2, 3)  # (B, nc, G, T, N)

    # 1. within chunks: per head, the (T x T) causal matrix C_i.B_j * decay(j -> i)
    a_cum_h = a_cum.permute(0, 1, 3, 2)  # (B, nc, H, T)
    causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
    # difference of a running sum (as mamba_ssm's kernels): masked before exp, where it is > 0
    decay = torch.exp((a_cum_h[..., :, None] - a_cum_h[..., None, :]).masked_fill(~causal, -math.inf))
    scores = (Cc @ Bc.transpose(-1, -2))[:, :, :, None] * decay.view(batch, nc, ngroups, hpg, T, T)
    xdt_h = xdt.reshape(batch, nc, T, ngroups, hpg, headdim).permute(0, 1, 3, 4, 2, 5)
    y_diag = scores @ xdt_h  # (B, nc, G, hpg, T, P)

    # 2. the state each chunk adds from its own tokens, per group: (N, T) @ (T, hpg*P)
    decay_to_end = torch.exp(a_cum[:, :, -1:] - a_cum)  # (B, nc, T, H)
    xdt_end = (xdt.reshape(batch, nc, T, nheads, headdim) * decay_to_end[..., None])
    xdt_end = xdt_end.reshape(batch, nc, T, ngroups, hpg * headdim).transpose(2, 3)  # (B, nc, G, T, hpg*P)
    chunk_states = Bc.transpose(-1, -2) @ xdt_end  # (B, nc, G, N, hpg*P)

    # 3. between chunks: h_{c+1} = exp(a_cum_T) h_c + S_c, nc steps on (B, G, N, hpg*P)
    chunk_decay = torch.exp(a_cum[:, :, -1]).repeat_interleave(headdim, dim=-1)  # (B, nc, H*P)
    chunk_decay = chunk_decay.view(batch, nc, ngroups, 1, hpg * headdim)
    if initial_state is None:
        h = x.new_zeros(batch, ngroups, dstate, hpg * headdim)
    else:  # (B, H, P, N) -> (B, G, N, hpg*P)
        h = initial_state.reshape(batch, ngroups, hpg * headdim, dstate).transpose(-1, -2)
    entering = []
    for decay_c, state_c in zip(chunk_decay.unbind(1), chunk_states.unbind(1)):
        entering.append(h)
        h = decay_c * h + state_c
    entering = torch.stack(entering, dim=1)  # (B, nc, G, N, hpg*P)

    # 4. the entering state read out by C, decayed from the chunk start: (T, N) @ (N, hpg*P)
    y_off = (Cc @ entering).transpose(2, 3).reshape(batch, nc, T, nheads, headdim)
    y_diag = y_diag.permute(0, 1, 4, 2, 3, 5).reshape(batch, nc, T, nheads, headdim)
    y = torch.addcmul(y_diag, y_off, torch.exp(a_cum)[..., None])  # (B, nc, T, H, P)
    y = y.reshape(batch, nc * T, nheads, headdim)[:, :seqlen]  # (B, L, H, P)
    if D is not None:
        y = torch.addcmul(y, x[:, :seqlen], D[:, None])
    last_state = h.transpose(-1, -2).reshape(batch, nheads, headdim, dstate)  # (B, H, P, N)
    return y, last_state


class CausalConv1d(torch.autograd.Function):
    """`pixelbyte.mamba.causal_conv1d` with a hand-written backward: autograd through it fills and
    adds a padded (B, L+K-1, Dc) buffer per tap; here each tap adds in place into the output
    (forward) or grad_x (backward), on the overlapping time range only."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        seqlen, width = x.shape[1], weight.shape[-1]
        taps = weight[:, 0]  # (Dc, K); tap K-1 multiplies x_t, tap K-1-s multiplies x_{t-s}
        out = x * taps[:, -1] if bias is None else torch.addcmul(bias, x, taps[:, -1])
        for s in range(1, min(width, seqlen + 1)):
            out[:, s:].addcmul_(x[:, :seqlen - s], taps[:, width - 1 - s])
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        # grad_out : (B, L, Dc) -> grad_x (B, L, Dc), grad_weight (Dc, 1, K), grad_bias (Dc)
        x, weight = ctx.saved_tensors
        seqlen, width = x.shape[1], weight.shape[-1]
        taps = weight[:, 0]
        grad_x = grad_out * taps[:, -1]
        grad_taps = torch.zeros_like(taps)  # (Dc, K): taps beyond L stay 0
        grad_taps[:, -1] = (grad_out * x).sum((0, 1))
        for s in range(1, min(width, seqlen + 1)):
            grad_x[:, :seqlen - s].addcmul_(grad_out[:, s:], taps[:, width - 1 - s])
            grad_taps[:, width - 1 - s] = (grad_out[:, s:] * x[:, :seqlen - s]).sum((0, 1))
        grad_bias = grad_out.sum((0, 1)) if ctx.has_bias else None
        return grad_x, grad_taps[:, None], grad_bias


class RMSNormGated(nn.Module):
    """mamba_ssm's RMSNormGated: rmsnorm(x * silu(z)) * weight over groups of `group_size` channels.
    The gate comes first (norm_before_gate=False, Mamba-2's default), so the norm cannot scale a
    closed gate back up."""

    def __init__(self, hidden_size, eps=1e-5, group_size=None, device=None, dtype=None):
        super().__init__()
        self.eps, self.group_size = eps, group_size or hidden_size
        self.weight = nn.Parameter(torch.ones(hidden_size, device=device, dtype=dtype))

    def forward(self, x, z):
        dtype = x.dtype
        x, z = x.to(_compute_dtype(dtype)), z.to(_compute_dtype(dtype))  # fp16/bf16 in fp32
        groups = (x * F.silu(z)).unflatten(-1, (-1, self.group_size))  # (..., G, Dn / G)
        groups = groups * torch.rsqrt(groups.square().mean(-1, keepdim=True) + self.eps)
        return (groups.flatten(-2) * self.weight).to(dtype)


class Mamba2(_Mixer):
    """Mamba-2 mixer: (B, L, D) -> (B, L, D), parameters identical to mamba_ssm's `Mamba2`.
    ``backend`` and ``scan_impl``: see the module docstring; ``chunk_size``: tokens per chunk of
    the SSD (None: CHUNK_SIZE, or CUDA_CHUNK_SIZE for the kernels; the result does not depend on it)."""

    _ops = staticmethod(_mamba2_ops)
    _ops_needs = "Triton kernels (pip install mamba-ssm)"

    def __init__(self, d_model, d_state=128, d_conv=4, expand=2, headdim=64, ngroups=1,
                 A_init_range=(1, 16), dt_min=0.001, dt_max=0.1, dt_init_floor=1e-4, bias=False,
                 conv_bias=True, chunk_size=None, backend="auto", scan_impl="chunked",
                 device=None, dtype=None):
        super().__init__()
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.d_inner = int(expand * d_model)
        self.headdim, self.ngroups, self.A_init_range = headdim, ngroups, A_init_range
        self.chunk_size, self.backend, self.scan_impl = chunk_size, backend, scan_impl
        self._check_args()
        self.nheads = self.d_inner // headdim
        self.ssm_shape = (self.nheads, headdim, d_state)
        factory_kwargs = {"device": device, "dtype": dtype}

        self.conv_dim = self.d_inner + 2 * ngroups * d_state  # x, B and C: the conv's channels
        # [z, xBC, dt] in one matmul: (B, L, D) -> (B, L, 2*Dn + 2*G*N + H)
        self.in_proj = nn.Linear(d_model, self.d_inner + self.conv_dim + self.nheads, bias=bias, **factory_kwargs)
        # depthwise causal conv over time on x, B and C together (xBC)
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, kernel_size=d_conv, groups=self.conv_dim,
                                padding=d_conv - 1, bias=conv_bias, **factory_kwargs)

        # one dt per head: softplus(dt + dt_bias) starts log-uniform in [dt_min, dt_max]
        self.dt_bias = nn.Parameter(dt_bias_init(self.nheads, dt_min, dt_max, dt_init_floor, device)
                                    .to(dtype=dtype))
        # one scalar decay rate per head, A = -exp(A_log) with A ~ U(A_init_range); kept fp32
        # unless a dtype is given, like upstream
        A = torch.empty(self.nheads, dtype=torch.float32, device=device).uniform_(*A_init_range)
        self.A_log = nn.Parameter(torch.log(A).to(dtype=dtype))  # (H)
        self.D = nn.Parameter(torch.ones(self.nheads, device=device))  # (H) skip, fp32
        for param in (self.dt_bias, self.A_log, self.D):
            param._no_weight_decay = True

        self.norm = RMSNormGated(self.d_inner, eps=1e-5, group_size=self.d_inner // ngroups, **factory_kwargs)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **factory_kwargs)

    def _check_args(self):
        # for direct use: ModelConfig checks its own fields before building this
        _check_ints(self, ("d_model", "d_state", "d_conv", "headdim", "ngroups"), 1)
        self._check_backend(SCAN_IMPLS)
        if self.d_inner < 1 or self.d_inner % self.headdim:
            _fail(self, "headdim", f"must divide d_inner = expand * d_model = {self.d_inner}")
        if (self.d_inner // self.headdim) % self.ngroups:
            _fail(self, "ngroups", f"must divide the number of heads, d_inner / headdim = "
                                   f"{self.d_inner // self.headdim}")
        if not (len(self.A_init_range) == 2 and 0 < self.A_init_range[0] <= self.A_init_range[1]):
            _fail(self, "A_init_range", "expected (low, high) with 0 < low <= high")

    def _in_proj(self, u):
        # u : (..., D) -> z (..., Dn), xBC (..., Dn + 2*G*N), dt (..., H). The matmul's output
        # width is padded to a multiple of 8 with zero weight rows, dropped after: the CPU GEMM
        # is slower on odd widths
        weight, bias = self.in_proj.weight, self.in_proj.bias
        pad = -weight.shape[0] % 8
        if pad:
            weight = F.pad(weight, (0, 0, 0, pad))
            bias = None if bias is None else F.pad(bias, (0, pad))
        zxbcdt = F.linear(u, weight, bias)  # (..., 2*Dn + 2*G*N + H + pad)
        return torch.split(zxbcdt, [self.d_inner, self.conv_dim, self.nheads, pad], dim=-1)[:3]

    def _split_xBC(self, xBC):
        # (..., Dn + 2*G*N) -> x (..., H, P), B, C (..., G, N)
        x, B, C = torch.split(xBC, [self.d_inner, self.ngroups * self.d_state, self.ngroups * self.d_state], dim=-1)
        return (x.unflatten(-1, (self.nheads, self.headdim)),
                B.unflatten(-1, (self.ngroups, self.d_state)), C.unflatten(-1, (self.ngroups, self.d_state)))

    def forward(self, hidden_states, inference_cache=None):
        """hidden_states : (B, L, D) -> (B, L, D). ``inference_cache`` (conv_state, ssm_state) from
        `allocate_inference_cache`, if given, is filled with the states after the last token."""
        use_cuda_kernels = self._use_cuda_kernels(hidden_states)
        z, xBC, dt = self._in_proj(hidden_states)  # (B, L, .)
        xBC = self._conv(xBC, inference_cache, CausalConv1d.apply)  # (B, L, Dn + 2GN)
        x, B, C = self._split_xBC(xBC)  # (B, L, H, P), (B, L, G, N), (B, L, G, N)
        if use_cuda_kernels:
            y, last_state = self._ssd_cuda(x, dt, B, C, want_state=inference_cache is not None)
        else:
            y, last_state = self._ssd_torch(x, dt, B, C)
        if inference_cache is not None:
            inference_cache[1].copy_(last_state)
        return self.out_proj(self.norm(y.flatten(-2).to(z.dtype), z))  # (B, L, D)

    def _ssd_torch(self, x, dt, B, C):
        # x : (B, L, H, P), dt : (B, L, H), B, C : (B, L, G, N) -> y (B, L, H, P), (B, H, P, N)
        x, dt, A, B, C, D = self._ssm_inputs(self.dt_bias, x, dt, B, C)  # dt after softplus, A : (H)
        if self.scan_impl == "reference":
            return ssd_ref(x, dt, A, B, C, D)
        return ssd_chunked(x, dt, A, B, C, D, chunk_size=self.chunk_size or CHUNK_SIZE)

    def _ssd_cuda(self, x, dt, B, C, want_state):
        # mamba_ssm's Triton SSD on our own parameters (softplus and dt_bias inside the kernel)
        out = self._ops()[0]["mamba_chunk_scan_combined"](
            x, dt, -torch.exp(self.A_log.float()), B, C, chunk_size=self.chunk_size or CUDA_CHUNK_SIZE,
            D=self.D, z=None, dt_bias=self.dt_bias, dt_softplus=True, return_final_states=want_state)
        return out if want_state else (out, None)

    def step(self, hidden_states, conv_state, ssm_state):
        """One token: hidden_states (B, 1, D) -> (out (B, 1, D), conv_state, ssm_state), the states
        updated in place: one step of `ssd_ref`'s recurrence, on every backend."""
        self._check_step(hidden_states)
        z, xBC, dt = self._in_proj(hidden_states[:, 0])  # (B, .)
        x, B, C = self._split_xBC(self._conv_step(xBC, conv_state))  # (B, H, P), (B, G, N), (B, G, N)
        x, dt, A, B, C, D = self._ssm_inputs(self.dt_bias, x, dt, B, C)
        B, C = (t.repeat_interleave(self.nheads // self.ngroups, dim=1) for t in (B, C))  # (B, H, N)
        h = torch.exp(dt * A)[..., None, None] * ssm_state.to(x.dtype) \
            + (dt[..., None] * x)[..., None] * B[:, :, None, :]  # (B, H, P, N)
        ssm_state.copy_(h)
        y = (h @ C[..., None]).squeeze(-1) + x * D[:, None]  # (B, H, P)
        return self.out_proj(self.norm(y.flatten(-2).to(z.dtype), z)).unsqueeze(1), conv_state, ssm_state
