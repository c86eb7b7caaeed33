"""Model-signal bindings: "when this signal fires (and these conditions hold), run that task".

A binding's task is always sent on commit of the transaction that fired the signal. What the
task receives is captured IN THE SIGNAL HANDLER, never read later: django-model-utils'
FieldTracker is reset when save() returns, before any on-commit callback runs, so a tracker
read at commit time would see no change under ATOMIC_REQUESTS or in a test transaction.

Arguments a bound task can receive (it receives those its signature names, or all of them
with ``**kwargs``; the first parameter is the CloudTaskRequest as for any task):

========== ============================================================================
post_save  instance (fetched fresh when the task runs), pk, changes, created, event
delete     pk, changes (the deleted row's tracked values as [value, None]), event
m2m        instance, pk, action, pk_set (sorted list, None for a clear), model, reverse, event
other      the signal's own keyword arguments (except ``signal`` and ``request``)
========== ============================================================================

``changes`` maps each tracked field to ``[old, new]``: the tracker's changes of this save
(``[None, value]`` for every tracked field when created). Several saves of one instance in one
transaction coalesce into one task whose changes run from the first old value to the last new
value, unless the binding says ``coalesce=False``.
"""

from __future__ import annotations

import copy
import inspect
import logging
import sys
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypedDict, Unpack

from django.apps import apps
from django.db import DEFAULT_DB_ALIAS, models, router, transaction
from django.db.models import signals as model_signals
from django.dispatch import Signal
from model_utils import FieldTracker

from .conf import require_installed
from .dispatch import (
    TaskHandle,
    call_in_transaction,
    defer,
    defer_keyed,
    pending_state,
    report_failure,
)
from .exceptions import ConfigurationError
from .serialization import encode_value

if TYPE_CHECKING:
    from .tasks import Task

__all__ = ["Binding", "all_bindings", "bind", "connect_all", "signal_label", "unbind"]

logger = logging.getLogger("cloudtask.bindings")

#: A Django model class, or "app_label.ModelName".
SenderSpec = type[models.Model] | str | Any

_SAVE, _DELETE, _M2M, _OTHER = "save", "delete", "m2m", "other"

_OFFERED: dict[str, frozenset[str]] = {
    _SAVE: frozenset({"instance", "pk", "changes", "created", "event"}),
    _DELETE: frozenset({"pk", "changes", "event"}),
    _M2M: frozenset({"instance", "pk", "action", "pk_set", "model", "reverse", "event"}),
}

#: m2m_changed fires before and after each change; only the "after" actions describe data
#: the task can read.
_M2M_ACTIONS = frozenset({"post_add", "post_remove", "post_clear"})

_bindings: list[Binding] = []
_lock = threading.Lock()
_connected_all = False


def _kind(signal: Signal) -> str:
    if signal is model_signals.post_save:
        return _SAVE
    if signal is model_signals.post_delete or signal is model_signals.pre_delete:
        return _DELETE
    if signal is model_signals.m2m_changed:
        return _M2M
    return _OTHER


def signal_label(signal: Signal) -> str:
    """A readable dotted name for a signal ("django.db.models.signals.post_save")."""
    preferred = ("django.db.models.signals", "django.core.signals", "cloudtask.signals")
    for module_name in preferred:
        module = sys.modules.get(module_name)
        for attr, value in vars(module or object()).items():
            if value is signal:
                return f"{module_name}.{attr}"
    for module_name, module in list(sys.modules.items()):
        try:
            items = list(vars(module).items())
        except TypeError:
            continue
        for attr, value in items:
            if value is signal:
                return f"{module_name}.{attr}"
    return repr(signal)


def _find_tracker(model: type[models.Model], fields: Iterable[str] = ()) -> Any:
    """The model's FieldTracker (one tracking every name in fields, if given), or None."""
    wanted = set(fields)
    first = None
    for klass in model.__mro__:
        for value in vars(klass).values():
            if isinstance(value, FieldTracker):
                if wanted <= set(value.fields):
                    return value
                first = first or value
    return None if wanted else first


@dataclass(frozen=True)
class _Pending:
    """What a coalescing binding remembers of the deferred task for one instance."""

    event: str
    changes: dict[str, list[Any]]


def _portable(value: Any) -> Any:
    """value copied for the task, or its str() if it cannot travel (a FieldFile, say).

    A field value the envelope cannot carry must not make every save of the model fail.
    """
    try:
        encode_value(value)
    except (TypeError, RecursionError):
        return str(value)
    return copy.deepcopy(value)


def _merge(
    earlier: dict[str, list[Any]], later: dict[str, list[Any]], event: str
) -> dict[str, list[Any]]:
    merged = {field: list(pair) for field, pair in earlier.items()}
    for field, (old, new) in later.items():
        merged[field] = [merged[field][0], new] if field in merged else [old, new]
    if event == "updated":
        # A field that ended where it started did not change, as far as anyone outside the
        # transaction can tell.
        merged = {f: pair for f, pair in merged.items() if pair[0] != pair[1]}
    return dict(sorted(merged.items()))


class Binding:
    """One declaration: signal + sender + conditions -> task, sent on commit."""

    def __init__(
        self,
        signal: Signal,
        *,
        task: Task[Any, Any],
        sender: SenderSpec = None,
        fields: Iterable[str] | None = None,
        when: Callable[..., bool] | None = None,
        created: bool | None = None,
        updated: bool | None = None,
        deleted: bool | None = None,
        coalesce: bool = True,
        raw: bool = False,
    ) -> None:
        if not isinstance(signal, Signal):
            raise ConfigurationError(
                f"bind(): signal must be a django.dispatch.Signal, not {signal!r}."
            )
        if isinstance(fields, str):
            raise ConfigurationError(
                f"bind(): fields= must be a list of field names, not the string {fields!r}."
            )
        if when is not None and not callable(when):
            raise ConfigurationError(f"bind(): when= must be callable, not {when!r}.")
        self.signal = signal
        self.task = task
        self.sender_spec = sender
        self.fields: tuple[str, ...] | None = tuple(fields) if fields is not None else None
        self.when = when
        self.created = created
        self.updated = updated
        self.deleted = deleted
        self.coalesce = coalesce
        self.raw = raw
        self.kind = _kind(signal)
        self.sender: Any = None
        self.tracker: Any = None
        self.tracked_fields: tuple[str, ...] | None = None
        self.fire_created = True
        self.fire_updated = True
        self.passes_all = False
        self.param_names: frozenset[str] = frozenset()
        self._trackers: dict[type[models.Model], Any] = {}
        self.connected = False

    # -- validation, at app ready ------------------------------------------------------------

    def _where(self) -> str:
        return (
            f"binding of task {self.task.name!r} to {signal_label(self.signal)}"
            f" (sender={self._sender_label()})"
        )

    def _sender_label(self) -> str:
        sender = self.sender if self.sender is not None else self.sender_spec
        if sender is None:
            return "any"
        if isinstance(sender, type) and issubclass(sender, models.Model):
            return sender._meta.label
        if isinstance(sender, str):
            return sender
        return getattr(sender, "__qualname__", repr(sender))

    def _resolve_sender(self) -> Any:
        spec = self.sender_spec
        if isinstance(spec, str):
            try:
                return apps.get_model(spec)
            except (LookupError, ValueError):
                raise ConfigurationError(
                    f"{self._where()}: sender {spec!r} is not an installed model "
                    "(use 'app_label.ModelName')."
                ) from None
        return spec

    def validate(self) -> None:
        """Check the declaration against the models; ConfigurationError naming what to fix."""
        where = self._where()
        self.sender = self._resolve_sender()
        model = (
            self.sender
            if isinstance(self.sender, type) and issubclass(self.sender, models.Model)
            else None
        )
        if self.kind != _SAVE and (self.created is not None or self.updated is not None):
            raise ConfigurationError(f"{where}: created=/updated= apply to post_save only.")
        if self.kind != _DELETE and self.deleted is not None:
            raise ConfigurationError(
                f"{where}: deleted= applies to post_delete and pre_delete only "
                "(omit on= with deleted=True to bind post_delete)."
            )
        if self.deleted is False:
            raise ConfigurationError(f"{where}: deleted=False would never fire.")
        self.fire_created = self.created if self.created is not None else self.updated is not True
        self.fire_updated = self.updated if self.updated is not None else self.created is not True
        if not self.fire_created and not self.fire_updated:
            raise ConfigurationError(f"{where}: created=False and updated=False would never fire.")
        if self.fields is not None:
            self._validate_fields(where, model)
        elif model is not None and self.kind in (_SAVE, _DELETE):
            self.tracker = _find_tracker(model)
            self.tracked_fields = tuple(sorted(self.tracker.fields)) if self.tracker else None
        self._validate_signature(where)

    def _validate_fields(self, where: str, model: type[models.Model] | None) -> None:
        if self.kind != _SAVE:
            raise ConfigurationError(f"{where}: fields= applies to post_save only.")
        if model is None:
            raise ConfigurationError(f"{where}: fields= needs sender= to be a model class.")
        if not self.fields:
            raise ConfigurationError(f"{where}: fields= is empty; omit it to fire on every save.")
        tracker = _find_tracker(model)
        if tracker is None:
            raise ConfigurationError(
                f"{where}: fields={list(self.fields)!r} needs a FieldTracker on "
                f"{model._meta.label}; add `tracker = FieldTracker()` "
                "(from model_utils import FieldTracker) to the model."
            )
        tracked = set(tracker.fields)
        resolved: list[str] = []
        for name in self.fields:
            if name in tracked:
                resolved.append(name)
                continue
            # FieldTracker() tracks attnames ("customer_id"); accept the field name too.
            try:
                attname = model._meta.get_field(name).attname  # type: ignore[union-attr]
            except Exception:
                attname = None
            if attname in tracked:
                resolved.append(str(attname))
                continue
            raise ConfigurationError(
                f"{where}: field {name!r} is not tracked by {model._meta.label}.{tracker.name}; "
                f"it tracks {sorted(tracked)!r}. Add it to FieldTracker(fields=[...])."
            )
        self.fields = tuple(resolved)
        self.tracker = _find_tracker(model, resolved)
        self.tracked_fields = tuple(sorted(self.tracker.fields))

    def _validate_signature(self, where: str) -> None:
        params = list(self.task.call_signature.parameters.values())
        self.passes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
        names = {
            p.name
            for p in params
            if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        }
        self.param_names = frozenset(names)
        offered = _OFFERED.get(self.kind)
        for p in params:
            required = p.default is inspect.Parameter.empty
            if p.kind is inspect.Parameter.POSITIONAL_ONLY and required:
                raise ConfigurationError(
                    f"{where}: {self.task.func.__qualname__}() has positional-only parameter "
                    f"{p.name!r}; a bound task receives keyword arguments."
                )
            if offered is not None and required and p.name in names and p.name not in offered:
                raise ConfigurationError(
                    f"{where}: {self.task.func.__qualname__}() needs {p.name!r}, which this "
                    f"signal does not provide; it provides {sorted(offered)!r}."
                )

    # -- connection --------------------------------------------------------------------------

    def connect(self) -> None:
        if self.connected:
            return
        self.validate()
        self.signal.connect(self.receive, sender=self.sender, weak=False, dispatch_uid=self._uid())
        self.connected = True

    def disconnect(self) -> None:
        if self.connected:
            self.signal.disconnect(sender=self.sender, dispatch_uid=self._uid())
            self.connected = False

    def _uid(self) -> str:
        return f"cloudtask.binding.{id(self)}"

    # -- the signal handler ------------------------------------------------------------------

    def receive(self, sender: Any, **kwargs: Any) -> None:
        if kwargs.get("raw") and not self.raw:
            return  # fixture loading: the data is not the application's doing
        if self.kind == _SAVE:
            self._receive_save(sender, kwargs)
        elif self.kind == _DELETE:
            self._receive_delete(sender, kwargs)
        elif self.kind == _M2M:
            self._receive_m2m(sender, kwargs)
        else:
            self._receive_other(sender, kwargs)

    def _alias(self, sender: Any, kwargs: dict[str, Any]) -> str:
        # The database the signal reports writing to is the transaction the task must wait for.
        using = kwargs.get("using")
        if isinstance(using, str):
            return using
        if self.task.using:
            return str(self.task.using)
        if isinstance(sender, type) and issubclass(sender, models.Model):
            return str(router.db_for_write(sender))
        return DEFAULT_DB_ALIAS

    def _tracker_of(self, instance: models.Model) -> Any:
        tracker = self.tracker
        if tracker is None and self.sender is None:
            # A binding for every sender looks the tracker up per model, once.
            model = type(instance)
            if model not in self._trackers:
                self._trackers[model] = _find_tracker(model)
            tracker = self._trackers[model]
        return getattr(instance, tracker.name) if tracker is not None else None

    def _capture(
        self, instance: models.Model, created: bool, update_fields: Iterable[str] | None
    ) -> dict[str, list[Any]]:
        """This save's changes, read from the tracker now, while it still knows them."""
        tracker = self._tracker_of(instance)
        if tracker is None:
            return {}
        if created:
            current = tracker.current()
            return {f: [None, _portable(current[f])] for f in sorted(current)}
        changed = tracker.changed()
        if update_fields is not None:
            # Only these columns were written; other changed attributes are still unsaved.
            saved: set[str] = set()
            for name in update_fields:
                saved.add(name)
                try:
                    saved.add(instance._meta.get_field(name).attname)  # type: ignore[union-attr]
                except Exception:  # noqa: S112 - an unknown name simply matches nothing
                    continue
            changed = {f: old for f, old in changed.items() if f in saved}
        current = tracker.current(list(changed))
        return {f: [_portable(changed[f]), _portable(current[f])] for f in sorted(changed)}

    def _passes(
        self, event: str, changes: dict[str, list[Any]], sender: Any, kwargs: dict[str, Any]
    ) -> bool:
        if event == "created" and not self.fire_created:
            return False
        if event == "updated":
            if not self.fire_updated:
                return False
            if self.fields is not None and not any(f in changes for f in self.fields):
                return False
        if self.when is not None:
            extra = {"changes": changes} if self.kind in (_SAVE, _DELETE) else {}
            signal_kwargs = {k: v for k, v in kwargs.items() if k != "signal"}
            return bool(self.when(sender=sender, **signal_kwargs, **extra))
        return True

    def _handle(self, offered: dict[str, Any]) -> TaskHandle:
        if self.passes_all:
            arguments = offered
        else:
            arguments = {k: v for k, v in offered.items() if k in self.param_names}
        call = self.task(**arguments)
        # Encoded now: an argument that will not serialize fails at the save, and later
        # changes to the instance cannot leak into the message.
        return TaskHandle(call.encode(), call=call, sender=self.task)

    def _send(self, handle: TaskHandle, alias: str) -> None:
        if call_in_transaction(alias):
            defer(handle, using=alias)
            return
        # Autocommit: the change is already committed, so the save must not fail because the
        # queue did, and the task must not be lost with it. A transaction of its own for the call
        # gives it the path of every call sent at commit: an outbox row written at that commit,
        # the send, and, if Cloud Tasks cannot take it now, the row left for the relay, the
        # failure logged and signalled (task_enqueue_failed).
        try:
            with transaction.atomic(using=alias):
                defer(handle, using=alias)
        except Exception as exc:
            # The outbox row itself could not be written (its table missing, the database
            # gone): nothing keeps the call; say so like any failure after a commit.
            report_failure(handle, exc)

    def _receive_save(self, sender: Any, kwargs: dict[str, Any]) -> None:
        instance: models.Model = kwargs["instance"]
        event = "created" if kwargs.get("created") else "updated"
        changes = self._capture(instance, event == "created", kwargs.get("update_fields"))
        alias = self._alias(sender, kwargs)
        if self.coalesce and call_in_transaction(alias):
            key = (self, instance._meta.label_lower, instance.pk)
            previous = pending_state(key, alias)
            if isinstance(previous, _Pending):
                event = previous.event
                changes = _merge(previous.changes, changes, event)
            state = _Pending(event, changes)
            if self._passes(event, changes, sender, kwargs):
                handle = self._handle(self._save_arguments(instance, event, changes))
                defer_keyed(handle, alias, key=key, state=state)
            else:
                # Remembered without a task: a later save of this instance in the transaction
                # merges into it (an instance created here stays "created"; a field that went
                # back to where it started cancels), and sends only if the merge qualifies.
                defer_keyed(None, alias, key=key, state=state)
            return
        if self._passes(event, changes, sender, kwargs):
            self._send(self._handle(self._save_arguments(instance, event, changes)), alias)

    @staticmethod
    def _save_arguments(
        instance: models.Model, event: str, changes: dict[str, list[Any]]
    ) -> dict[str, Any]:
        return {
            "instance": instance,
            "pk": instance.pk,
            "changes": changes,
            "created": event == "created",
            "event": event,
        }

    def _receive_delete(self, sender: Any, kwargs: dict[str, Any]) -> None:
        instance: models.Model = kwargs["instance"]
        tracker = self._tracker_of(instance)
        changes: dict[str, list[Any]] = {}
        if tracker is not None:
            current = tracker.current()
            changes = {f: [_portable(current[f]), None] for f in sorted(current)}
        if not self._passes("deleted", changes, sender, kwargs):
            return
        offered = {"pk": instance.pk, "changes": changes, "event": "deleted"}
        self._send(self._handle(offered), self._alias(sender, kwargs))

    def _receive_m2m(self, sender: Any, kwargs: dict[str, Any]) -> None:
        action = kwargs.get("action")
        if action not in _M2M_ACTIONS:
            return
        if not self._passes(str(action), {}, sender, kwargs):
            return
        instance: models.Model = kwargs["instance"]
        pk_set = kwargs.get("pk_set")
        other = kwargs.get("model")
        offered = {
            "instance": instance,
            "pk": instance.pk,
            "action": action,
            "pk_set": None if pk_set is None else _sorted(pk_set),
            "model": other._meta.label_lower if other is not None else None,
            "reverse": bool(kwargs.get("reverse")),
            "event": action,
        }
        self._send(self._handle(offered), self._alias(sender, kwargs))

    def _receive_other(self, sender: Any, kwargs: dict[str, Any]) -> None:
        if not self._passes("signal", {}, sender, kwargs):
            return
        offered = {k: v for k, v in kwargs.items() if k not in ("signal", "request")}
        self._send(self._handle(offered), self._alias(sender, kwargs))

    # -- description -------------------------------------------------------------------------

    def conditions(self) -> list[str]:
        """Human-readable conditions, for `manage.py cloudtask_tasks`."""
        out: list[str] = []
        if self.kind == _SAVE:
            if self.fire_created and not self.fire_updated:
                out.append("created")
            elif self.fire_updated and not self.fire_created:
                out.append("updated")
            else:
                out.append("created or updated")
            if self.fields:
                out.append(f"fields changed: {', '.join(self.fields)}")
        elif self.kind == _DELETE:
            out.append("deleted")
        elif self.kind == _M2M:
            out.append("actions: post_add, post_remove, post_clear")
        if self.when is not None:
            out.append(f"when={getattr(self.when, '__qualname__', repr(self.when))}")
        if self.kind == _SAVE:
            out.append("coalesced per instance" if self.coalesce else "one task per save")
        if self.raw:
            out.append("raw saves too")
        return out

    def describe(self) -> dict[str, Any]:
        return {
            "signal": signal_label(self.signal),
            "sender": self._sender_label(),
            "conditions": self.conditions(),
            "task": self.task.name,
        }

    def __repr__(self) -> str:
        return f"<Binding {signal_label(self.signal)} {self._sender_label()} -> {self.task.name}>"


def _sorted(values: Iterable[Any]) -> list[Any]:
    items = list(values)
    try:
        return sorted(items)
    except TypeError:
        return items


class BindingOptions(TypedDict, total=False):
    """The conditions of a binding: the keyword arguments of Binding and bind()."""

    sender: SenderSpec
    fields: Iterable[str] | None
    when: Callable[..., bool] | None
    created: bool | None
    updated: bool | None
    deleted: bool | None
    coalesce: bool
    raw: bool


def bind(
    signal: Signal | None = None, *, task: Task[Any, Any], **options: Unpack[BindingOptions]
) -> Binding:
    """Send task on commit whenever signal fires from sender and the conditions hold.

    signal defaults to post_save (post_delete with deleted=True). Declared before the app
    registry is ready, the binding is connected (and checked) at app ready; declared later,
    at once. A bad declaration raises ConfigurationError.
    """
    # A binding in a project without cloudtask installed would never be connected (that is
    # done at app ready): refuse it where it is declared.
    require_installed()
    if signal is None:
        signal = model_signals.post_delete if options.get("deleted") else model_signals.post_save
    binding = Binding(signal, task=task, **options)
    with _lock:
        _bindings.append(binding)
        connect_now = _connected_all
    if connect_now:
        try:
            binding.connect()
        except Exception:
            unbind(binding)
            raise
    return binding


def unbind(binding: Binding) -> None:
    """Disconnect a binding and forget it."""
    binding.disconnect()
    with _lock:
        if binding in _bindings:
            _bindings.remove(binding)


def all_bindings() -> list[Binding]:
    with _lock:
        return list(_bindings)


def connect_all() -> None:
    """Connect every declared binding; called from the app's ready()."""
    global _connected_all
    for binding in all_bindings():
        binding.connect()
    with _lock:
        _connected_all = True
