"""Shared fixtures."""
import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module's tests: tiny models gain nothing from intra-op threads, and on a shared
    machine (or beside a server thread) OpenMP spin-waits and oversubscription make them slow."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def mtp_logits(model, input_ids: torch.Tensor, hidden: torch.Tensor) -> list[torch.Tensor]:
    """Training-time MTP logits per depth: the shared head over Transformer.forward_mtp_hidden."""
    return [model.head(h) for h in model.forward_mtp_hidden(input_ids, hidden)]
