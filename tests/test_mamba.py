"""Tests of pixelbyte.mamba: weights compatible with mamba_ssm / mambapy, the chunked scan equal to
the sequential reference, decoding equal to the full forward, causality and init.

Oracle: mambapy 1.2.0's `MambaBlock` (an independent pure-PyTorch Mamba with the same parameter
names). Small shapes throughout so that the file runs in well under 90 s on 2 CPU cores.
Errors are measured relative to the largest magnitude of the reference tensor:
    rel_err(a, b) = max|a - b| / max|b|
"""

import contextlib
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from pixelbyte.mamba import (
    Mamba,
    mamba_ssm_available,
    selective_scan,
    selective_scan_ref,
)

mambapy = pytest.importorskip("mambapy.mamba")



D_MODEL, D_STATE, BATCH = 16, 8, 2


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def make_mambapy_block(d_model=D_MODEL, d_state=D_STATE):
    # mambapy's MambaConfig is a dataclass: keyword arguments, n_layers is required
    config = mambapy.MambaConfig(d_model=d_model, n_layers=1, d_state=d_state, expand_factor=2, d_conv=4)
    return mambapy.MambaBlock(config)


def randomize_(module, seed):
    """Moves every parameter away from its special init (D = 1, A_log = log(1..N), small dt bias)
    so that a wrong sign, a transposed B/C or a missing skip cannot hide behind it."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.add_(0.1 * torch.randn(param.shape, generator=gen, dtype=param.dtype))
    return module


@contextlib.contextmanager
def mambapy_in_full_fp64():
    # mambapy computes A = -exp(A_log.float()) and D.float(): in an fp64 model this rounds A and D
    # to fp32 (errors ~1e-8). Inside this block `.float()` leaves fp64 tensors alone, so the oracle
    # is fp64 end to end and we can compare at 1e-10. Restored on exit.
    original_float = torch.Tensor.float

    def float_keeping_fp64(self, *args, **kwargs):
        return self if self.dtype == torch.float64 else original_float(self, *args, **kwargs)

    torch.Tensor.float = float_keeping_fp64
    try:
        yield
    finally:
        torch.Tensor.float = original_float


def forward_backward(module, x, grad_out, fp64_oracle=False):
    """Returns output, grad w.r.t. x and {name: grad} of every parameter."""
    module.zero_grad()
    x = x.detach().clone().requires_grad_(True)
    with mambapy_in_full_fp64() if fp64_oracle else contextlib.nullcontext():
        out = module(x)
    out.backward(grad_out)
    return out.detach(), x.grad, {name: p.grad for name, p in module.named_parameters()}


# ---------------------------------------------------------------------------------- weights

# from mamba_cpu.md: mamba_ssm.modules.mamba_simple.Mamba(d_model, d_state), expand 2, d_conv 4
def expected_shapes(d_model, d_state):
    d_inner, dt_rank = 2 * d_model, math.ceil(d_model / 16)
    return {
        "A_log": (d_inner, d_state),
        "D": (d_inner,),
        "in_proj.weight": (2 * d_inner, d_model),
        "conv1d.weight": (d_inner, 1, 4),
        "conv1d.bias": (d_inner,),
        "x_proj.weight": (dt_rank + 2 * d_state, d_inner),
        "dt_proj.weight": (d_inner, dt_rank),
        "dt_proj.bias": (d_inner,),
        "out_proj.weight": (d_model, d_inner),
    }


@pytest.mark.parametrize("d_model, d_state, n_params", [(64, 16, 32_640), (81, 64, 73_548)])
def test_parameter_names_and_shapes(d_model, d_state, n_params):
    model = Mamba(d_model, d_state=d_state)
    shapes = {name: tuple(p.shape) for name, p in model.state_dict().items()}
    assert shapes == expected_shapes(d_model, d_state)
    assert sum(p.numel() for p in model.parameters()) == n_params
    assert list(model.buffers()) == []


def test_state_dict_round_trip_with_mambapy():
    torch.manual_seed(0)
    ours, theirs = Mamba(D_MODEL, d_state=D_STATE), make_mambapy_block()
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    # ours -> mambapy and back, strict both ways; a round trip preserves every tensor
    randomize_(ours, seed=1)
    theirs.load_state_dict(ours.state_dict(), strict=True)
    again = Mamba(D_MODEL, d_state=D_STATE)
    again.load_state_dict(theirs.state_dict(), strict=True)
    for name, tensor in ours.state_dict().items():
        assert torch.equal(tensor, again.state_dict()[name]), name


# ---------------------------------------------------------------------------------- vs mambapy


@pytest.mark.parametrize("seqlen", [5, 32, 37, 100])  # < chunk, == chunk, not multiples of 32
@pytest.mark.parametrize("dtype, tol", [
    (torch.float64, 1e-10),  # measured ~1e-15: same math, different association order
    (torch.float32, 1e-4),  # measured ~1e-6
])
def test_matches_mambapy(seqlen, dtype, tol):
    torch.manual_seed(seqlen)
    ours = randomize_(Mamba(D_MODEL, d_state=D_STATE), seed=seqlen).to(dtype)
    theirs = make_mambapy_block().to(dtype)
    theirs.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(BATCH, seqlen, D_MODEL, dtype=dtype)
    grad_out = torch.randn(BATCH, seqlen, D_MODEL, dtype=dtype)

    out, grad_x, grads = forward_backward(ours, x, grad_out)
    out_ref, grad_x_ref, grads_ref = forward_backward(theirs, x, grad_out,
                                                      fp64_oracle=dtype == torch.float64)
    errors = {"out": rel_err(out, out_ref), "grad x": rel_err(grad_x, grad_x_ref)}
    errors.update({f"grad {name}": rel_err(g, grads_ref[name]) for name, g in grads.items()})
    print(f"{dtype} L={seqlen} max rel err {max(errors.values()):.2e}")
    assert set(grads) == set(grads_ref)
    for what, err in errors.items():
        assert err < tol, f"{what}: rel err {err:.2e} >= {tol}"


@pytest.mark.parametrize("chunk_size", [1, 7, 64])
def test_chunk_size_does_not_change_the_result(chunk_size):
    # fp64, tolerance 1e-12: the chunking only changes where the state is saved
    torch.manual_seed(0)
    base = randomize_(Mamba(D_MODEL, d_state=D_STATE), seed=3).double()
    other = Mamba(D_MODEL, d_state=D_STATE, chunk_size=chunk_size).double()
    other.load_state_dict(base.state_dict())
    x = torch.randn(BATCH, 45, D_MODEL, dtype=torch.float64)
    grad_out = torch.randn_like(x)
    out, grad_x, _ = forward_backward(base, x, grad_out)
    out2, grad_x2, _ = forward_backward(other, x, grad_out)
    assert rel_err(out2, out) < 1e-12 and rel_err(grad_x2, grad_x) < 1e-12


def test_reference_scan_impl_matches_chunked():
    # the benchmark's "loop" baseline is scan_impl="reference": fp64, tolerance 1e-12
    torch.manual_seed(0)
    chunked = randomize_(Mamba(D_MODEL, d_state=D_STATE), seed=4).double()
    loop = Mamba(D_MODEL, d_state=D_STATE, scan_impl="reference").double()
    loop.load_state_dict(chunked.state_dict())
    x = torch.randn(BATCH, 40, D_MODEL, dtype=torch.float64)
    grad_out = torch.randn_like(x)
    out, grad_x, grads = forward_backward(chunked, x, grad_out)
    out2, grad_x2, grads2 = forward_backward(loop, x, grad_out)
    assert rel_err(out2, out) < 1e-12 and rel_err(grad_x2, grad_x) < 1e-12
    assert all(rel_err(grads2[name], g) < 1e-12 for name, g in grads.items())


def test_low_precision_input_runs_scan_in_fp32():
    # bf16 module: output dtype bf16, close to the fp32 module (bf16 has ~3 significant digits)
    torch.manual_seed(0)
    model = Mamba(D_MODEL, d_state=D_STATE)
    model_bf16 = Mamba(D_MODEL, d_state=D_STATE, dtype=torch.bfloat16)
    model_bf16.load_state_dict(model.state_dict())
    x = torch.randn(BATCH, 20, D_MODEL)
    out = model_bf16(x.bfloat16())
    assert out.dtype == torch.bfloat16
    assert rel_err(out.float(), model(x)) < 5e-2


# ---------------------------------------------------------------------------------- scan


def scan_inputs(batch, dim, dstate, seqlen, dtype, seed, requires_grad=True):
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=dtype)

    u, delta, z = randn(batch, dim, seqlen), 0.5 * randn(batch, dim, seqlen), randn(batch, dim, seqlen)
    A = -torch.rand(dim, dstate, generator=gen, dtype=dtype) * 4 - 0.1  # A < 0, as in Mamba
    B, C = randn(batch, dstate, seqlen), randn(batch, dstate, seqlen)
    D, delta_bias = randn(dim), 0.5 * randn(dim)
    inputs = {"u": u, "delta": delta, "A": A, "B": B, "C": C, "D": D, "z": z, "delta_bias": delta_bias}
    return {k: v.requires_grad_(requires_grad) for k, v in inputs.items()}


def run_scan(scan_fn, inputs, options, grad_seed=0, **kwargs):
    """Runs a scan, backprops a random gradient into out (and last_state); returns outputs+grads."""
    leaves = {k: v.detach().clone().requires_grad_(v.requires_grad) for k, v in inputs.items()}
    result = scan_fn(**leaves, **options, **kwargs)
    outs = result if isinstance(result, tuple) else (result,)
    gen = torch.Generator().manual_seed(grad_seed)
    grad_outs = [torch.randn(o.shape, generator=gen, dtype=o.dtype) for o in outs]
    torch.autograd.backward(outs, grad_outs)
    return [o.detach() for o in outs], {k: v.grad for k, v in leaves.items() if v.requires_grad}


SCAN_OPTIONS = [
    dict(),
    dict(delta_softplus=True),
    dict(delta_bias=True, delta_softplus=True, return_last_state=True),
    dict(z=True, D=True),
    dict(z=True, D=True, delta_bias=True, delta_softplus=True, return_last_state=True),
]


@pytest.mark.parametrize("options", SCAN_OPTIONS, ids=lambda o: "+".join(o) or "plain")
@pytest.mark.parametrize("seqlen, chunk_size", [(1, 32), (31, 32), (32, 32), (33, 8), (70, 16)])
def test_selective_scan_matches_reference_fp64(options, seqlen, chunk_size):
    # fp64, tolerance 1e-12 relative on outputs, last state and every input gradient
    inputs = scan_inputs(2, 6, 5, seqlen, torch.float64, seed=seqlen)
    used = {"u", "delta", "A", "B", "C"} | {k for k in ("D", "z", "delta_bias") if options.get(k)}
    inputs = {k: v for k, v in inputs.items() if k in used}
    flags = {k: v for k, v in options.items() if k in ("delta_softplus", "return_last_state")}
    outs, grads = run_scan(selective_scan, inputs, flags, chunk_size=chunk_size)
    outs_ref, grads_ref = run_scan(selective_scan_ref, inputs, flags)
    assert len(outs) == len(outs_ref) == 1 + bool(options.get("return_last_state"))
    for o, o_ref in zip(outs, outs_ref):
        assert rel_err(o, o_ref) < 1e-12
    assert grads.keys() == grads_ref.keys() == used
    for name in used:
        assert rel_err(grads[name], grads_ref[name]) < 1e-12, name


def test_selective_scan_matches_reference_fp32():
    # fp32, tolerance 1e-5 relative (measured ~1e-7)
    inputs = scan_inputs(3, 16, 8, 75, torch.float32, seed=7)
    flags = dict(delta_softplus=True, return_last_state=True)
    outs, grads = run_scan(selective_scan, inputs, flags)
    outs_ref, grads_ref = run_scan(selective_scan_ref, inputs, flags)
    errors = [rel_err(o, r) for o, r in zip(outs, outs_ref)]
    errors += [rel_err(grads[k], grads_ref[k]) for k in grads_ref]
    print(f"fp32 selective_scan vs ref: max rel err {max(errors):.2e}")
    assert max(errors) < 1e-5


def test_selective_scan_partial_requires_grad():
    # only u and C need gradients: the Function must skip the others and still be right
    inputs = scan_inputs(2, 4, 3, 40, torch.float64, seed=11, requires_grad=False)
    inputs["u"].requires_grad_(True)
    inputs["C"].requires_grad_(True)
    outs, grads = run_scan(selective_scan, inputs, {})
    outs_ref, grads_ref = run_scan(selective_scan_ref, inputs, {})
    assert grads.keys() == {"u", "C"} == grads_ref.keys()
    assert all(rel_err(grads[k], grads_ref[k]) < 1e-12 for k in grads)


@settings(max_examples=15, deadline=None, derandomize=True)
@given(batch=st.integers(1, 3), dim=st.integers(1, 5), dstate=st.integers(1, 5),
       seqlen=st.integers(1, 50), chunk_size=st.integers(1, 20), seed=st.integers(0, 2**16))
def test_selective_scan_property(batch, dim, dstate, seqlen, chunk_size, seed):
    # any shape, any chunk size: fast == reference to 1e-12 (fp64)
    inputs = scan_inputs(batch, dim, dstate, seqlen, torch.float64, seed)
    flags = dict(delta_softplus=True, return_last_state=True)
    outs, grads = run_scan(selective_scan, inputs, flags, chunk_size=chunk_size)
    outs_ref, grads_ref = run_scan(selective_scan_ref, inputs, flags)
    assert all(rel_err(o, r) < 1e-12 for o, r in zip(outs, outs_ref))
    assert all(rel_err(grads[k], grads_ref[k]) < 1e-12 for k in grads_ref)


def test_chunked_scan_saves_only_boundary_states():
    # The point of the Function: saved activations must not grow like L * N (one full state per
    # step, as autograd through the loop does). Count bytes saved for backward in both.
    batch, dim, dstate, seqlen = 2, 64, 32, 256
    inputs = scan_inputs(batch, dim, dstate, seqlen, torch.float32, seed=0)
    inputs = {k: v for k, v in inputs.items() if k in ("u", "delta", "A", "B", "C")}

    def saved_numel(scan_fn):
        total = [0]

        def pack(t):
            total[0] += t.numel()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            scan_fn(**inputs, delta_softplus=True)
        return total[0]

    full_states = batch * dim * dstate * seqlen
    input_numel = sum(v.numel() for v in inputs.values())
    boundary_states = batch * dim * dstate * (seqlen // 32)
    assert saved_numel(selective_scan_ref) > full_states
    # the chunked scan keeps (copies of) its inputs and one state per chunk, nothing per step
    saved = saved_numel(selective_scan)
    assert saved <= 2 * input_numel + boundary_states
    assert saved < full_states / 4


# ---------------------------------------------------------------------------------- torch.compile


@pytest.mark.parametrize("seqlen", [5, 45])  # one chunk; two chunks with padding
def test_forward_and_backward_compile_to_one_graph(seqlen, compiled_matches_eager):
    # The chunked scan is two custom ops: opaque nodes in the graph, its loops not traced
    torch.manual_seed(0)
    model = randomize_(Mamba(D_MODEL, d_state=D_STATE, backend="torch"), seed=8)
    x = torch.randn(BATCH, seqlen, D_MODEL)
    compiled_matches_eager(model, model, [x], grad_out=torch.randn_like(x))


def test_step_compiles_to_one_graph(compiled_matches_eager):
    torch.manual_seed(0)
    model = randomize_(Mamba(D_MODEL, d_state=D_STATE, backend="torch"), seed=9).eval()
    conv_state, ssm_state = (s.normal_() for s in model.allocate_inference_cache(BATCH))
    with torch.no_grad():  # the states are inputs: compared after the step (updated in place)
        compiled_matches_eager(model.step, model, [torch.randn(BATCH, 1, D_MODEL), conv_state, ssm_state])


# ---------------------------------------------------------------------------------- decoding


def test_step_matches_full_forward():
    # fp32, 50 tokens one by one; tolerance 1e-5 absolute on outputs of size ~0.1-1
    torch.manual_seed(0)
    model = randomize_(Mamba(D_MODEL, d_state=D_STATE), seed=5).eval()
    x = torch.randn(BATCH, 50, D_MODEL)
    conv_state, ssm_state = model.allocate_inference_cache(BATCH, max_seqlen=50)
    assert conv_state.shape == (BATCH, 2 * D_MODEL, 4) and ssm_state.shape == (BATCH, 2 * D_MODEL, D_STATE)
    assert not conv_state.any() and not ssm_state.any()
    with torch.no_grad():
        full = model(x)
        steps = []
        for t in range(x.shape[1]):
            out, conv_out, ssm_out = model.step(x[:, t:t + 1], conv_state, ssm_state)
            assert conv_out is conv_state and ssm_out is ssm_state  # updated in place
            steps.append(out)
    err = (torch.cat(steps, dim=1) - full).abs().max().item()
    print(f"step vs forward, 50 tokens: max abs err {err:.2e}")
    assert err < 1e-5


@pytest.mark.parametrize("prefill_len", [2, 20])  # shorter and longer than d_conv
def test_prefill_then_step_matches_full_forward(prefill_len):
    # forward(..., inference_cache) fills the states; stepping on from there == full forward
    torch.manual_seed(0)
    model = randomize_(Mamba(D_MODEL, d_state=D_STATE), seed=6).eval()
    x = torch.randn(BATCH, 30, D_MODEL)
    conv_state, ssm_state = model.allocate_inference_cache(BATCH)
    with torch.no_grad():
        full = model(x)
        outs = [model(x[:, :prefill_len], inference_cache=(conv_state, ssm_state))]
        for t in range(prefill_len, x.shape[1]):
            outs.append(model.step(x[:, t:t + 1], conv_state, ssm_state)[0])
    assert (torch.cat(outs, dim=1) - full).abs().max().item() < 1e-5


def test_step_rejects_more_than_one_token():
    model = Mamba(D_MODEL, d_state=D_STATE)
    conv_state, ssm_state = model.allocate_inference_cache(1)
    with pytest.raises(ValueError, match="one token"):
        model.step(torch.randn(1, 2, D_MODEL), conv_state, ssm_state)


def test_no_leak_from_the_future():
    # Perturbing position t must leave every output before t bit-for-bit unchanged (fp64;
    # rows of the projections and chunks before t are computed identically), and change t.
    torch.manual_seed(0)
    model = randomize_(Mamba(D_MODEL, d_state=D_STATE), seed=7).double()
    x = torch.randn(BATCH, 70, D_MODEL, dtype=torch.float64)
    with torch.no_grad():
        base = model(x)
        for t in (0, 3, 31, 32, 45, 69):
            x_perturbed = x.clone()
            x_perturbed[:, t] += 1.0
            out = model(x_perturbed)
            assert torch.equal(out[:, :t], base[:, :t]), f"position {t} leaks into the past"
            assert not torch.allclose(out[:, t], base[:, t])


# ---------------------------------------------------------------------------------- init


def test_init_statistics():
    torch.manual_seed(0)
    d_model, d_state = 64, 16
    model = Mamba(d_model, d_state=d_state)
    d_inner, dt_rank = 2 * d_model, math.ceil(d_model / 16)
    expected_A_log = torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).expand(d_inner, -1)
    assert torch.equal(model.A_log.data, expected_A_log)
    assert torch.equal(model.D.data, torch.ones(d_inner))
    assert model.A_log.dtype == model.D.dtype == torch.float32
    assert model.A_log._no_weight_decay and model.D._no_weight_decay
    # dt = softplus(bias) is log-uniform in [dt_min, dt_max] = [1e-3, 0.1]
    dt = F.softplus(model.dt_proj.bias.detach().double())
    assert dt.min() >= 1e-3 * (1 - 1e-5) and dt.max() <= 0.1 * (1 + 1e-5)
    log_dt = dt.log()
    assert abs(log_dt.mean().item() - math.log(1e-3 * 0.1) / 2) < 0.4  # mean of log-uniform, 128 draws
    bound = dt_rank ** -0.5
    assert model.dt_proj.weight.abs().max() <= bound
    assert model.x_proj.bias is None and model.in_proj.bias is None and model.out_proj.bias is None


def test_constructor_options():
    model = Mamba(20, d_state=4, expand=3, dt_rank=5, d_conv=3, bias=True, conv_bias=False,
                  dtype=torch.float64)
    assert model.d_inner == 60 and model.dt_rank == 5
    assert model.in_proj.bias is not None and model.conv1d.bias is None
    assert model.in_proj.weight.dtype == torch.float64
    assert model(torch.randn(1, 9, 20, dtype=torch.float64)).shape == (1, 9, 20)
    with pytest.raises(ValueError, match="backend='gpu'"):
        Mamba(8, backend="gpu")
    with pytest.raises(ValueError, match="scan_impl"):
        Mamba(8, scan_impl="fast")


# ---------------------------------------------------------------------------------- backends

needs_cuda_kernels = pytest.mark.skipif(
    not (torch.cuda.is_available() and mamba_ssm_available()),
    reason="needs CUDA and the mamba_ssm package",
)


def test_cuda_backend_on_cpu_raises_a_clear_error():
    model = Mamba(D_MODEL, d_state=D_STATE, backend="cuda")
    x = torch.randn(1, 4, D_MODEL)
    missing = "CUDA tensors" if mamba_ssm_available() else "mamba_ssm"
    with pytest.raises(RuntimeError, match=missing):
        model(x)
    conv_state, ssm_state = model.allocate_inference_cache(1)
    with pytest.raises(RuntimeError, match=missing):
        model.step(x[:, :1], conv_state, ssm_state)


def test_auto_backend_on_cpu_uses_torch():
    assert isinstance(mamba_ssm_available(), bool)
    torch.manual_seed(0)
    auto = Mamba(D_MODEL, d_state=D_STATE)
    manual = Mamba(D_MODEL, d_state=D_STATE, backend="torch")
    manual.load_state_dict(auto.state_dict())
    x = torch.randn(1, 10, D_MODEL)
    assert torch.equal(auto(x), manual(x))


@needs_cuda_kernels
def test_torch_backend_matches_mamba_ssm_kernels():
    # fp32 on CUDA. The fused kernels use another summation order and exp/softplus: tolerance
    # 1e-3 relative (mamba_ssm's own tests use rtol 6e-4 / atol 2e-3 for fp32).
    from mamba_ssm.modules.mamba_simple import Mamba as UpstreamMamba

    torch.manual_seed(0)
    device, d_model, d_state, seqlen = "cuda", 64, 16, 100
    fused = randomize_(Mamba(d_model, d_state=d_state, backend="cuda"), seed=8).to(device)
    torch_backend = Mamba(d_model, d_state=d_state, backend="torch").to(device)
    upstream = UpstreamMamba(d_model, d_state=d_state, layer_idx=0).to(device)
    torch_backend.load_state_dict(fused.state_dict(), strict=True)
    upstream.load_state_dict(fused.state_dict(), strict=True)
    fused.load_state_dict(upstream.state_dict(), strict=True)

    x = torch.randn(2, seqlen, d_model, device=device)
    grad_out = torch.randn_like(x)
    results = {name: forward_backward(m, x, grad_out)
               for name, m in [("fused", fused), ("torch", torch_backend), ("upstream", upstream)]}
    out_t, gx_t, grads_t = results["torch"]
    for name in ("fused", "upstream"):
        out, gx, grads = results[name]
        errs = {"out": rel_err(out_t, out), "grad x": rel_err(gx_t, gx)}
        errs.update({f"grad {k}": rel_err(grads_t[k], g) for k, g in grads.items()})
        abs_err = (out_t - out).abs().max().item()
        print(f"torch backend vs {name}: out max abs {abs_err:.2e}, "
              + ", ".join(f"{k} rel {v:.2e}" for k, v in errs.items()))
        for what, err in errs.items():
            assert err < 1e-3, f"{name} {what}: {err:.2e}"

    # decoding: our step (mamba_ssm kernels when importable) and our torch step vs upstream's step
    with torch.no_grad():
        caches = {name: m.allocate_inference_cache(2, seqlen)
                  for name, m in [("fused", fused), ("torch", torch_backend), ("upstream", upstream)]}
        for t in range(20):
            token = x[:, t:t + 1]
            outs = {name: m.step(token, *caches[name])[0]
                    for name, m in [("fused", fused), ("torch", torch_backend), ("upstream", upstream)]}
            for name in ("fused", "torch"):
                err = rel_err(outs[name], outs["upstream"])
                assert err < 1e-3, f"step {t} {name} vs upstream: {err:.2e}"
        for name in ("fused", "torch"):
            print(f"step {name} vs upstream after 20 tokens: ssm_state rel err "
                  f"{rel_err(caches[name][1], caches['upstream'][1]):.2e}")
