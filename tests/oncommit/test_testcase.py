"""TestCase.captureOnCommitCallbacks drives on-commit tasks as a real commit would."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import transaction
from django.test import TestCase

from cloudtask.models import OutboxMessage

from .jobs import Deliveries, ping


class Boom(Exception):
    pass


class CaptureOnCommitCallbacksTests(TestCase):
    emu: Any
    deliveries: Deliveries

    @pytest.fixture(autouse=True)
    def _use_emulator(self, emulator: Any, deliveries: Deliveries, settings: Any) -> None:
        self.emu = emulator
        self.deliveries = deliveries
        # A TestCase holds its transaction (and, on SQLite, the database's write lock) for the
        # whole test: the live server delivering the tasks could not write execution records.
        # These tests are about on-commit capture; records have tests of their own.
        settings.CLOUDTASK = {**settings.CLOUDTASK, "RECORDS": False}

    def test_execute_true_sends_the_surviving_calls(self) -> None:
        with self.captureOnCommitCallbacks(execute=True) as callbacks:
            kept = ping("kept").delay()
            try:
                with transaction.atomic():
                    dropped = ping("dropped").delay()
                    raise Boom
            except Boom:
                pass
            also = ping("also kept").delay()
            assert kept.state == "pending"

        assert len(callbacks) == 2
        assert (kept.state, also.state, dropped.state) == ("sent", "sent", "dropped")
        assert self.emu.wait_idle()
        labels = sorted(d["label"] for d in self.deliveries.of("ping"))
        assert labels == ["also kept", "kept"]

    def test_without_execute_nothing_is_sent_until_a_callback_runs(self) -> None:
        with self.captureOnCommitCallbacks() as callbacks:
            first = ping("one").delay()
            second = ping("two").delay()

        assert len(callbacks) == 2
        assert self.emu.wait_idle()
        assert self.deliveries.of("ping") == []
        for callback in callbacks:
            callback()
        assert (first.state, second.state) == ("sent", "sent")
        assert len(self.deliveries.wait("ping", 2)) == 2

    def test_a_callback_that_defers_again_is_sent_too(self) -> None:
        followers: list[Any] = []
        with self.captureOnCommitCallbacks(execute=True):
            ping("first").delay()
            transaction.on_commit(lambda: followers.append(ping("follower").delay()))

        assert [h.state for h in followers] == ["sent"]
        assert len(self.deliveries.wait("ping", 2)) == 2

    def test_each_test_starts_with_a_fresh_batch(self) -> None:
        # Calls deferred (and never run) by another test rolled back with it.
        with self.captureOnCommitCallbacks(execute=True) as callbacks:
            ping("fresh").delay()
        assert len(callbacks) == 1
        assert self.emu.wait_idle()
        assert [d["label"] for d in self.deliveries.of("ping")] == ["fresh"]

    def test_without_a_real_commit_no_row_is_written_and_the_call_is_still_sent(self) -> None:
        # The outbox writes rows just before a COMMIT, which a TestCase never runs: the
        # captured callbacks send the calls without rows (nothing to make durable, or delete).
        with self.captureOnCommitCallbacks(execute=True):
            handle = ping("no commit").delay()
            assert not OutboxMessage.objects.exists()
            assert handle.outbox is not None  # a row is due at the commit

        assert (handle.state, handle.outbox) == ("sent", None)
        assert not OutboxMessage.objects.exists()
        assert [d["label"] for d in self.deliveries.wait("ping", 1)] == ["no commit"]
