"""Tests of pixelbyte.mamba2: weights laid out as mamba_ssm's Mamba2, the chunked SSD equal to the
sequential recurrence and to the minimal SSD of the Mamba-2 paper (outputs and every gradient),
decoding equal to the full forward, causality, the model option ssm="mamba2", clear errors.

Oracles: `ssd_ref` (the recurrence, one token at a time) and `ssd_minimal` (segsum + 4 einsums).
fp64 throughout the equivalence tests: the chunked form only re-associates sums, so they agree
to ~1e-14; the tolerance 1e-10 leaves room without hiding a wrong term (those show as ~1e-1).
Small shapes: the whole file runs in a few seconds on one CPU thread.
    rel_err(a, b) = max|a - b| / max|b|
"""

import math

import pytest
import torch
import torch.nn.functional as F

from pixelbyte.mamba import causal_conv1d
from pixelbyte.mamba2 import (
    CausalConv1d,
    Mamba2,
    RMSNormGated,
    mamba2_ssm_available,
    segsum,
    ssd_chunked,
    ssd_minimal,
    ssd_ref,
)
from pixelbyte.models import ModelConfig, PixelByteModel, paper_config

TOL = 1e-10


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def randomize_(module, seed):
    """Moves every parameter away from its special init (D = 1, norm weight = 1, ...) so that a
    wrong sign, a swapped B/C or a missing skip cannot hide behind it."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.add_(0.1 * torch.randn(param.shape, generator=gen, dtype=param.dtype))
    return module


def ssd_inputs(batch=2, seqlen=37, nheads=4, headdim=3, ngroups=2, dstate=5, seed=0):
    """fp64 SSD inputs: x (B, L, H, P), dt > 0 (B, L, H), A < 0 (H), B, C (B, L, G, N), D (H),
    initial_state (B, H, P, N)."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    return {"x": randn(batch, seqlen, nheads, headdim),
            "dt": F.softplus(randn(batch, seqlen, nheads)),
            "A": -4 * torch.rand(nheads, generator=gen, dtype=torch.float64) - 0.1,
            "B": randn(batch, seqlen, ngroups, dstate), "C": randn(batch, seqlen, ngroups, dstate),
            "D": randn(nheads), "initial_state": randn(batch, nheads, headdim, dstate)}


def run_ssd(fn, inputs, **kwargs):
    """Runs an SSD, backprops random gradients into y and the last state; returns y, the last
    state and {input name: gradient}."""
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in inputs.items()}
    y, last_state = fn(**leaves, **kwargs)
    gen = torch.Generator().manual_seed(1)
    torch.autograd.backward([y, last_state], [torch.randn(y.shape, generator=gen, dtype=y.dtype),
                                              torch.randn(last_state.shape, generator=gen, dtype=y.dtype)])
    return y.detach(), last_state.detach(), {k: v.grad for k, v in leaves.items()}


def assert_all_close(result, reference, tol=TOL):
    (y, state, grads), (y_ref, state_ref, grads_ref) = result, reference
    errors = {"y": rel_err(y, y_ref), "last_state": rel_err(state, state_ref)}
    errors.update({f"grad {k}": rel_err(g, grads_ref[k]) for k, g in grads.items()})
    print(f"max rel err {max(errors.values()):.1e}")
    for what, err in errors.items():
        assert err < tol, f"{what}: rel err {err:.2e} >= {tol}"


# ---------------------------------------------------------------------------------- weights

# Written down from mamba_ssm/modules/mamba2.py (state-spaces/mamba), default options:
#   d_inner = expand * d_model, nheads = d_inner / headdim, in_proj: [z, x, B, C, dt] without
#   bias, conv1d depthwise over xBC (d_inner + 2 * ngroups * d_state channels) with bias,
#   dt_bias / A_log / D one per head, norm = RMSNormGated(d_inner) (weight only), out_proj
#   without bias. Parameters of the module itself come first in its state dict.
def expected_shapes(d_model, d_state, expand, headdim, ngroups, d_conv=4):
    d_inner = expand * d_model
    nheads = d_inner // headdim
    conv_dim = d_inner + 2 * ngroups * d_state
    return [("dt_bias", (nheads,)), ("A_log", (nheads,)), ("D", (nheads,)),
            ("in_proj.weight", (2 * d_inner + 2 * ngroups * d_state + nheads, d_model)),
            ("conv1d.weight", (conv_dim, 1, d_conv)), ("conv1d.bias", (conv_dim,)),
            ("norm.weight", (d_inner,)), ("out_proj.weight", (d_model, d_inner))]


@pytest.mark.parametrize("sizes, n_params", [
    (dict(d_model=64, d_state=16, expand=2, headdim=16, ngroups=1), 28_088),
    (dict(d_model=81, d_state=64, expand=1, headdim=9, ngroups=3), 53_949),
    (dict(d_model=256, d_state=128, expand=2, headdim=64, ngroups=1), 465_176),  # upstream defaults
])
def test_parameter_names_and_shapes(sizes, n_params):
    model = Mamba2(**sizes)
    assert [(k, tuple(v.shape)) for k, v in model.state_dict().items()] == expected_shapes(**sizes)
    assert sum(p.numel() for p in model.parameters()) == n_params
    assert list(model.buffers()) == []


def test_init():
    torch.manual_seed(0)
    model = Mamba2(64, d_state=16, headdim=8)  # 16 heads
    assert model.nheads == 16 and model.d_inner == 128
    A = torch.exp(model.A_log.detach())
    assert A.min() >= 1 and A.max() <= 16  # A_init_range (1, 16)
    dt = F.softplus(model.dt_bias.detach().double())  # log-uniform in [dt_min, dt_max]
    assert dt.min() >= 1e-3 * (1 - 1e-5) and dt.max() <= 0.1 * (1 + 1e-5)
    assert torch.equal(model.D.data, torch.ones(16)) and torch.equal(model.norm.weight.data, torch.ones(128))
    assert model.A_log.dtype == model.D.dtype == torch.float32
    assert model.A_log._no_weight_decay and model.D._no_weight_decay and model.dt_bias._no_weight_decay
    assert model.in_proj.bias is None and model.out_proj.bias is None and model.conv1d.bias is not None


# ---------------------------------------------------------------------------------- SSD


@pytest.mark.parametrize("seqlen, chunk_size", [(1, 8), (5, 8), (16, 16), (33, 16), (70, 32)])
@pytest.mark.parametrize("ngroups", [1, 2])
def test_ssd_chunked_matches_sequential_reference(seqlen, chunk_size, ngroups):
    # outputs, last state and the gradient of every input (x, dt, A, B, C, D, initial state)
    inputs = ssd_inputs(seqlen=seqlen, ngroups=ngroups, seed=seqlen)
    assert_all_close(run_ssd(ssd_chunked, inputs, chunk_size=chunk_size), run_ssd(ssd_ref, inputs))


def test_ssd_chunked_without_optional_inputs():
    inputs = ssd_inputs(seqlen=20, ngroups=1, seed=3)
    del inputs["D"], inputs["initial_state"]
    assert_all_close(run_ssd(ssd_chunked, inputs, chunk_size=8), run_ssd(ssd_ref, inputs))


@pytest.mark.parametrize("seqlen, chunk_size", [(16, 4), (48, 16)])
def test_ssd_chunked_matches_minimal_ssd(seqlen, chunk_size):
    # the Mamba-2 paper's minimal SSD (its own chunking, segsum, 4 einsums) as a second oracle
    inputs = ssd_inputs(seqlen=seqlen, ngroups=2, seed=seqlen + 1)
    minimal = run_ssd(ssd_minimal, inputs, chunk_size=chunk_size)
    assert_all_close(run_ssd(ssd_chunked, inputs, chunk_size=chunk_size), minimal)
    assert_all_close(run_ssd(ssd_ref, inputs), minimal)


def test_segsum_is_the_sum_over_each_segment():
    a = torch.randn(2, 6, dtype=torch.float64)
    out = segsum(a)
    for i in range(6):
        for j in range(6):
            expected = a[:, j + 1:i + 1].sum(-1) if j <= i else torch.full((2,), -math.inf, dtype=a.dtype)
            assert torch.allclose(out[:, i, j], expected, atol=1e-14), (i, j)


def test_ssd_errors_name_the_shapes():
    inputs = ssd_inputs(seqlen=8, nheads=4, ngroups=3)  # 3 groups do not divide 4 heads
    with pytest.raises(ValueError, match="G dividing H"):
        ssd_chunked(**inputs)
    with pytest.raises(ValueError, match="multiple of chunk_size"):
        ssd_minimal(**ssd_inputs(seqlen=10), chunk_size=4)


# ---------------------------------------------------------------------------------- conv, norm


@pytest.mark.parametrize("seqlen", [1, 3, 4, 30])  # shorter than, equal to and longer than K
def test_causal_conv_matches_reference(seqlen):
    gen = torch.Generator().manual_seed(seqlen)
    x = torch.randn(2, seqlen, 7, generator=gen, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(7, 1, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(7, generator=gen, dtype=torch.float64, requires_grad=True)
    grad_out = torch.randn(2, seqlen, 7, generator=gen, dtype=torch.float64)
    results = []
    for conv in (CausalConv1d.apply, causal_conv1d):
        out = conv(x, weight, bias)
        grads = torch.autograd.grad(out, (x, weight, bias), grad_out)
        results.append((out, *grads))
    for got, want in zip(*results):
        assert rel_err(got, want) < TOL
    # nn.Conv1d with the same weights (padding K - 1, first L outputs) is the definition
    conv = torch.nn.Conv1d(7, 7, 4, groups=7, padding=3).double()
    conv.weight.data, conv.bias.data = weight.detach(), bias.detach()
    assert rel_err(results[0][0], conv(x.transpose(1, 2))[..., :seqlen].transpose(1, 2)) < TOL


def test_gated_rmsnorm():
    # rmsnorm(x * silu(z)) * weight over groups of group_size channels (norm_before_gate=False)
    torch.manual_seed(0)
    norm = RMSNormGated(12, group_size=4).double()
    norm.weight.data.uniform_(0.5, 1.5)
    x, z = torch.randn(3, 5, 12, dtype=torch.float64), torch.randn(3, 5, 12, dtype=torch.float64)
    gated = (x * F.silu(z)).view(3, 5, 3, 4)
    expected = (gated / (gated.pow(2).mean(-1, keepdim=True) + 1e-5).sqrt()).view(3, 5, 12) * norm.weight
    assert rel_err(norm(x, z), expected) < TOL


# ---------------------------------------------------------------------------------- the mixer


def make_pair(seed, **kwargs):
    """A randomized fp64 Mamba2 and a copy with the sequential reference scan."""
    sizes = dict(d_model=16, d_state=6, expand=2, headdim=4, ngroups=2)  # 8 heads, 2 groups
    sizes.update(kwargs)
    torch.manual_seed(seed)
    fast = randomize_(Mamba2(**sizes, backend="torch"), seed).double()
    reference = Mamba2(**sizes, backend="torch", scan_impl="reference").double()
    reference.load_state_dict(fast.state_dict(), strict=True)
    return fast, reference


def forward_backward(module, x, grad_out):
    module.zero_grad()
    x = x.detach().clone().requires_grad_(True)
    out = module(x)
    out.backward(grad_out)
    return out.detach(), x.grad, {name: p.grad for name, p in module.named_parameters()}


@pytest.mark.parametrize("seqlen, chunk_size", [(1, None), (7, 4), (32, None), (45, 16)])
def test_mixer_matches_reference_scan(seqlen, chunk_size):
    # output, input gradient and the gradient of every parameter, fp64
    fast, reference = make_pair(seed=seqlen, chunk_size=chunk_size)
    x = torch.randn(2, seqlen, 16, dtype=torch.float64)
    grad_out = torch.randn_like(x)
    out, grad_x, grads = forward_backward(fast, x, grad_out)
    out_ref, grad_x_ref, grads_ref = forward_backward(reference, x, grad_out)
    errors = {"out": rel_err(out, out_ref), "grad x": rel_err(grad_x, grad_x_ref)}
    errors.update({f"grad {name}": rel_err(g, grads_ref[name]) for name, g in grads.items()})
    print(f"L={seqlen} max rel err {max(errors.values()):.1e}")
    assert set(grads) == {name for name, _ in expected_shapes(16, 6, 2, 4, 2)}
    for what, err in errors.items():
        assert err < TOL, f"{what}: rel err {err:.2e}"


@pytest.mark.parametrize("ngroups", [1, 2])
def test_step_matches_full_forward(ngroups):
    fast, _ = make_pair(seed=5, ngroups=ngroups)
    x = torch.randn(2, 40, 16, dtype=torch.float64)
    conv_state, ssm_state = fast.allocate_inference_cache(2, max_seqlen=40)
    assert conv_state.shape == (2, 32 + 2 * ngroups * 6, 4) and ssm_state.shape == (2, 8, 4, 6)
    assert not conv_state.any() and not ssm_state.any()
    with torch.no_grad():
        full = fast(x)
        steps = []
        for t in range(x.shape[1]):
            out, conv_out, ssm_out = fast.step(x[:, t:t + 1], conv_state, ssm_state)
            assert conv_out is conv_state and ssm_out is ssm_state  # updated in place
            steps.append(out)
    assert rel_err(torch.cat(steps, dim=1), full) < TOL


@pytest.mark.parametrize("prefill_len", [2, 19])  # shorter and longer than d_conv
def test_prefill_then_step_matches_full_forward(prefill_len):
    fast, _ = make_pair(seed=6)
    x = torch.randn(2, 30, 16, dtype=torch.float64)
    conv_state, ssm_state = fast.allocate_inference_cache(2)
    with torch.no_grad():
        full = fast(x)
        outs = [fast(x[:, :prefill_len], inference_cache=(conv_state, ssm_state))]
        for t in range(prefill_len, x.shape[1]):
            outs.append(fast.step(x[:, t:t + 1], conv_state, ssm_state)[0])
    assert rel_err(torch.cat(outs, dim=1), full) < TOL


def test_no_leak_from_the_future():
    # perturbing position t leaves every output before t unchanged and changes t
    fast, _ = make_pair(seed=7)
    x = torch.randn(2, 50, 16, dtype=torch.float64)
    with torch.no_grad():
        base = fast(x)
        for t in (0, 3, 31, 32, 49):
            x_perturbed = x.clone()
            x_perturbed[:, t] += 1.0
            out = fast(x_perturbed)
            assert torch.allclose(out[:, :t], base[:, :t], rtol=0, atol=1e-12), f"position {t} leaks into the past"
            assert not torch.allclose(out[:, t], base[:, t])


@pytest.mark.parametrize("scan_impl", ["chunked", "reference"])
@pytest.mark.parametrize("seqlen", [5, 45])  # one chunk; two chunks with padding
def test_forward_and_backward_compile_to_one_graph(scan_impl, seqlen, compiled_matches_eager):
    fast, reference = make_pair(seed=8)
    model = (fast if scan_impl == "chunked" else reference).float()
    x = torch.randn(2, seqlen, 16)
    compiled_matches_eager(model, model, [x], grad_out=torch.randn_like(x))


def test_step_compiles_to_one_graph(compiled_matches_eager):
    fast, _ = make_pair(seed=9)
    model = fast.float().eval()
    conv_state, ssm_state = (s.normal_() for s in model.allocate_inference_cache(2))
    with torch.no_grad():  # the states are inputs: compared after the step (updated in place)
        compiled_matches_eager(model.step, model, [torch.randn(2, 1, 16), conv_state, ssm_state])


def test_low_precision_input_runs_scan_in_fp32():
    torch.manual_seed(0)
    model = Mamba2(16, d_state=8, headdim=8)
    model_bf16 = Mamba2(16, d_state=8, headdim=8, dtype=torch.bfloat16)
    model_bf16.load_state_dict(model.state_dict())
    x = torch.randn(2, 20, 16)
    out = model_bf16(x.bfloat16())
    assert out.dtype == torch.bfloat16
    assert rel_err(out.float(), model(x)) < 5e-2


@pytest.mark.parametrize("kwargs, match", [
    (dict(headdim=5), "headdim=5 is invalid: must divide d_inner = expand \\* d_model = 32"),
    (dict(headdim=4, ngroups=3), "ngroups=3 is invalid: must divide the number of heads"),
    (dict(chunk_size=0), "chunk_size=0 is invalid"),
    (dict(d_state=0), "d_state=0 is invalid"),
    (dict(backend="triton"), "backend='triton' is invalid: allowed values are"),
    (dict(scan_impl="compiled"), "scan_impl='compiled' is invalid: allowed values are"),
    (dict(A_init_range=(0, 1)), "A_init_range"),
])
def test_bad_arguments_give_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Mamba2(16, **{"headdim": 8, **kwargs})


def test_step_rejects_more_than_one_token():
    model = Mamba2(16, d_state=4, headdim=8)
    conv_state, ssm_state = model.allocate_inference_cache(1)
    with pytest.raises(ValueError, match="one token"):
        model.step(torch.randn(1, 2, 16), conv_state, ssm_state)


def test_cuda_backend_on_cpu_raises_a_clear_error():
    model = Mamba2(16, d_state=4, headdim=8, backend="cuda")
    missing = "CUDA tensors" if mamba2_ssm_available() else "mamba_ssm"
    with pytest.raises(RuntimeError, match=missing):
        model(torch.randn(1, 4, 16))


def test_auto_backend_on_cpu_uses_torch():
    torch.manual_seed(0)
    auto = Mamba2(16, d_state=4, headdim=8)
    manual = Mamba2(16, d_state=4, headdim=8, backend="torch")
    manual.load_state_dict(auto.state_dict())
    x = torch.randn(1, 10, 16)
    assert torch.equal(auto(x), manual(x))


@pytest.mark.skipif(not (torch.cuda.is_available() and mamba2_ssm_available()),
                    reason="needs CUDA and the mamba_ssm package")
def test_torch_backend_matches_mamba_ssm():
    # fp32 on CUDA: our torch path vs our cuda path vs upstream's Mamba2 on the same weights
    from mamba_ssm.modules.mamba2 import Mamba2 as UpstreamMamba2

    torch.manual_seed(0)
    sizes = dict(d_model=64, d_state=16, headdim=16)
    ours = randomize_(Mamba2(**sizes, backend="cuda"), seed=8).cuda()
    torch_backend = Mamba2(**sizes, backend="torch").cuda()
    upstream = UpstreamMamba2(**sizes, layer_idx=0).cuda()
    torch_backend.load_state_dict(ours.state_dict(), strict=True)
    upstream.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(2, 100, 64, device="cuda")
    outs = {name: m(x) for name, m in [("cuda", ours), ("torch", torch_backend), ("upstream", upstream)]}
    assert rel_err(outs["torch"], outs["upstream"]) < 1e-3
    assert rel_err(outs["cuda"], outs["upstream"]) < 1e-3


# ---------------------------------------------------------------------------------- model option


def test_model_option_builds_mamba2_mixers_and_keeps_the_default():
    assert ModelConfig().ssm == "mamba"
    default = PixelByteModel(ModelConfig(model="bysmamba", dim=18, hidden=8, backend="torch"))
    assert all(type(b.mixer).__name__ == "Mamba" for b in default.backbone.blocks)
    cfg = ModelConfig(model="bysmamba", ssm="mamba2", dim=18, hidden=8, expand=1, headdim=9, backend="torch")
    model = PixelByteModel(cfg)
    assert all(isinstance(b.mixer, Mamba2) and b.mixer.nheads == 2 for b in model.backbone.blocks)
    # the paper's size: 81 dims, d_state 64, 2 layers; the budget rule gives expand=1
    paper = paper_config("ssm_uni_pxby_conv_81_64_2", ssm="mamba2")
    assert (paper.expand, paper.headdim, PixelByteModel(paper).num_parameters()) == (1, 81, 80_842)


@pytest.mark.parametrize("kwargs, match", [
    (dict(ssm="mamba3"), "ModelConfig.ssm='mamba3' is invalid: allowed values are"),
    (dict(ssm="mamba2", headdim=7), "ModelConfig.headdim=7 is invalid: must divide expand \\* dim = 36"),
    (dict(ssm="mamba2", scan_impl="compiled"), "ModelConfig.scan_impl='compiled' is invalid"),
    (dict(headdim=0), "ModelConfig.headdim=0 is invalid"),
])
def test_model_config_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ModelConfig(model="bysmamba", dim=18, hidden=8, **kwargs)


def test_model_step_matches_forward_and_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    cfg = ModelConfig(model="bysmamba", ssm="mamba2", dim=18, hidden=8, expand=1, headdim=9,
                      objective="causal", backend="torch")
    model = PixelByteModel(cfg).double().eval()
    x = torch.randint(0, cfg.vocab_size, (2, 12, 3, 3))
    with torch.no_grad():
        full = model.logits(x)
        state = model.init_state(batch_size=2)
        steps = [model.step(x[:, t], state)[0] for t in range(x.shape[1])]
    assert rel_err(torch.stack(steps, dim=1), full) < TOL
    model.float().save_pretrained(tmp_path)
    loaded = PixelByteModel.from_pretrained(tmp_path)
    assert loaded.config == cfg
    with torch.no_grad():
        assert torch.equal(loaded.logits(x), model.logits(x))


def test_bidirectional_model_runs_both_directions_with_one_set_of_weights():
    torch.manual_seed(0)
    cfg = ModelConfig(model="bysmamba", ssm="mamba2", bidirectional=True, dim=18, hidden=8, expand=1,
                      headdim=9, backend="torch")
    model = PixelByteModel(cfg).double()
    block = model.backbone.blocks[0]
    assert block.bi_norm is not None
    h = torch.randn(2, 10, 18, dtype=torch.float64)
    u = block.norm(h)
    expected = h + block.bi_norm(block.mixer(u) + block.mixer(u.flip(1)).flip(1))
    assert torch.equal(block(h), expected)
    x = torch.randint(0, cfg.vocab_size, (2, 10, 3, 3))
    assert model.logits(x).shape == (2, 10, cfg.vocab_size)
