"""One torch thread for the grounding tests: the tiny model gains nothing from two, and on a shared,
loaded machine two intra-op threads stall each other (tens of seconds instead of one)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
