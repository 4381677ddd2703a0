"""The package's public surface: ``__all__`` is sorted and every name in it exists."""

from __future__ import annotations

import station_runtime.natsauth as natsauth


def test_all_is_sorted_and_complete() -> None:
    assert natsauth.__all__ == sorted(natsauth.__all__)
    assert all(hasattr(natsauth, name) for name in natsauth.__all__)
