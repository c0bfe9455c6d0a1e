import numpy as np
import pytest

from pipelines.data.sequences import Sequences


def make_cyclic_world(n_users: int = 300, n_items: int = 40, length: int = 8, seed: int = 0) -> Sequences:
    """Each user walks items i, i+1, i+2, ... (mod n): the next item is fully predictable."""
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, n_items, n_users)
    items = [((s + np.arange(length)) % n_items) + 1 for s in starts]
    times = [np.arange(length, dtype=np.float64) + u * 100 for u in range(n_users)]
    return Sequences(user_ids=np.arange(1, n_users + 1), items=items, times=times, n_items=n_items)


@pytest.fixture()
def cyclic_world() -> Sequences:
    return make_cyclic_world()
