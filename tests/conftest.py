import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """The test models are tiny: a second intra-op thread only adds sync overhead, and on a busy
    2-core machine spin-waiting OpenMP threads made small-model tests 10-1000x slower. Subprocess
    tests (torchrun, the trainer's kill/resume) are unaffected. Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _compiled_matches_eager(fn, module, inputs, grad_out=None):
    """`torch.compile(fn, fullgraph=True)` gives eager's outputs, in-place updated inputs (a
    decoding state) and, with grad_out, gradients. fullgraph=True makes any graph break an
    error (a host sync, a Python branch on a tensor's value); aot_eager traces forward and
    backward through AOTAutograd as inductor does, without compiling C++: seconds, not minutes."""
    torch._dynamo.reset()
    results = []
    for run in (torch.compile(fn, fullgraph=True, backend="aot_eager"), fn):
        module.zero_grad(set_to_none=True)
        leaves = [t.detach().clone().requires_grad_(grad_out is not None) for t in inputs]
        out = run(*leaves)
        out = out[0] if isinstance(out, tuple) else out
        if grad_out is not None:
            out.backward(grad_out)
        grads = [t.grad for t in leaves] + [p.grad for p in module.parameters()]
        results.append([out.detach()] + [t.detach().clone() for t in leaves] + grads)
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


@pytest.fixture
def compiled_matches_eager():
    return _compiled_matches_eager
