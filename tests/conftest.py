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
