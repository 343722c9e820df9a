"""An autouse fixture for modules whose tests must hold with and without the native
part (tunnel/_fastpath.c): import `sealing_code` into the module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tunnel import native


@pytest.fixture(autouse=True, params=["native", "python"])
def sealing_code(request: pytest.FixtureRequest) -> Iterator[None]:
    """Run the test once with the native part, where built, and once without."""
    kept = native.fastpath
    if request.param == "python":
        native.fastpath = None
    elif kept is None:
        pytest.skip("tunnel._fastpath is not built")
    yield
    native.fastpath = kept
