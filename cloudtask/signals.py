"""Signals sent around a task's life. The sender is always the Task object."""

from django.dispatch import Signal

#: A task call was accepted by the backend. kwargs: call, handle.
task_enqueued = Signal()
#: Sending a task call failed after its transaction committed. kwargs: call, message, exception.
task_enqueue_failed = Signal()
#: The endpoint (or an inline run) is about to run a task. kwargs: request, args, kwargs.
task_started = Signal()
#: A task returned. kwargs: request, result.
task_succeeded = Signal()
#: A task raised. kwargs: request, exception, final (True when no retry will follow).
task_failed = Signal()
