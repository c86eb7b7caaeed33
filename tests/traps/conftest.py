"""Fixtures for the newcomer's traps: tasks declared by a test are forgotten after it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from cloudtask import registry


@pytest.fixture
def declared() -> Iterator[None]:
    """Unregister every task the test declares (the registry, and its checks, are process-wide)."""
    before = {t.name for t in registry.all_tasks()}
    yield
    for t in registry.all_tasks():
        if t.name not in before:
            registry.unregister(t.name)
