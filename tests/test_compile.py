"""The training hot path is one graph: ``torch.compile(model, fullgraph=True)`` fails on any
graph break (a host round trip such as ``.cpu()``, ``.numpy()``, ``.item()``, ``int(tensor)``,
or a Python branch on a tensor's value), so these tests fail if forward or backward does host
work. The ``aot_eager`` backend traces forward and backward through AOTAutograd like inductor
does, without spending minutes compiling C++ on a CI core."""
import pytest
import torch

from pixelbyte import data
from pixelbyte.config import DataConfig, ModelConfig
from pixelbyte.models import PixelByteModel

FAMILIES = {
    "lstm": dict(model="lstm"),
    "attention": dict(model="attention", n_heads=2),
    "bysmamba": dict(model="bysmamba", backend="torch"),
    "bysmamba-mamba2": dict(model="bysmamba", backend="torch", ssm="mamba2", headdim=16),
}


@pytest.fixture(scope="module")
def batch():
    """Two whole items (shape text, image, caption), cut to 40 tokens: every position feature
    moves (segments, rows, a declared shape). LSTMs are unrolled per token when traced."""
    ds = data.ItemDataset(data.load(DataConfig())[:2])
    x, y, positions = data.collate([ds[0], ds[1]])
    return x[:, :40], y[:, :40], positions[:, :40]


def _compiled_matches_eager(cfg: ModelConfig, x, y, positions=None):
    torch.manual_seed(0)
    model = PixelByteModel(cfg)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    logits, loss = compiled(x, y, positions)
    loss.backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters()}
    model.zero_grad()
    ref_logits, ref_loss = model(x, y, positions)
    ref_loss.backward()
    torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(loss, ref_loss, atol=1e-5, rtol=1e-4)
    for k, p in model.named_parameters():
        torch.testing.assert_close(grads[k], p.grad, atol=1e-5, rtol=1e-4, msg=f"gradient of {k}")


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("given", [True, False], ids=["positions-from-the-data-path", "positions-in-forward"])
def test_forward_and_backward_compile_to_one_graph(family, given, batch):
    x, y, positions = batch
    cfg = ModelConfig(dim=32, hidden=16, depth=2, objective="causal", positions=True, condition=True,
                      **FAMILIES[family])
    # Dynamo refuses nn.LSTM unless asked (a torch limitation, not ours): allow_rnn traces it
    with torch._dynamo.config.patch(allow_rnn=True):
        _compiled_matches_eager(cfg, x, y, positions if given else None)


@pytest.mark.parametrize("family", ["lstm", "bysmamba"])
def test_bidirectional_models_compile_to_one_graph(family, batch):
    x, _, _ = batch
    cfg = ModelConfig(dim=32, hidden=16, depth=2, objective="next", bidirectional=True, **FAMILIES[family])
    with torch._dynamo.config.patch(allow_rnn=True):
        _compiled_matches_eager(cfg, x, x[:, -1, 0, 1])
