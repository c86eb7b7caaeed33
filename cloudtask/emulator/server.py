"""The ``google.cloud.tasks.v2.CloudTasks`` gRPC service.

Built with grpcio's generic handlers on the google-cloud-tasks package's own proto-plus message
classes (``serialize`` / ``deserialize``): no generated stubs, no protobuf pin. Methods not
listed here (IAM, CMEK, batch) are unknown to the server, so gRPC answers UNIMPLEMENTED.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
from google.cloud import tasks_v2

from .dispatcher import Dispatcher
from .state import ApiError, Store

SERVICE = "google.cloud.tasks.v2.CloudTasks"


def _empty(_: object) -> bytes:
    return b""  # google.protobuf.Empty has no fields: its encoding is empty


class CloudTasksService:
    def __init__(self, store: Store, dispatcher: Dispatcher) -> None:
        self.store = store
        self.dispatcher = dispatcher

    # -- queues --
    def create_queue(self, request: tasks_v2.CreateQueueRequest) -> tasks_v2.Queue:
        return self.store.create_queue(request.parent, request.queue)

    def get_queue(self, request: tasks_v2.GetQueueRequest) -> tasks_v2.Queue:
        return self.store.get_queue(request.name)

    def list_queues(self, request: tasks_v2.ListQueuesRequest) -> tasks_v2.ListQueuesResponse:
        return self.store.list_queues(request.parent, request.page_size, request.page_token)

    def update_queue(self, request: tasks_v2.UpdateQueueRequest) -> tasks_v2.Queue:
        paths = list(request.update_mask.paths) if "update_mask" in request else []
        return self.store.update_queue(request.queue, paths)

    def delete_queue(self, request: tasks_v2.DeleteQueueRequest) -> None:
        self.store.delete_queue(request.name)

    def purge_queue(self, request: tasks_v2.PurgeQueueRequest) -> tasks_v2.Queue:
        return self.store.purge_queue(request.name)

    def pause_queue(self, request: tasks_v2.PauseQueueRequest) -> tasks_v2.Queue:
        return self.store.set_paused(request.name, True)

    def resume_queue(self, request: tasks_v2.ResumeQueueRequest) -> tasks_v2.Queue:
        return self.store.set_paused(request.name, False)

    # -- tasks --
    def create_task(self, request: tasks_v2.CreateTaskRequest) -> tasks_v2.Task:
        record = self.store.create_task(request.parent, request.task)
        with self.store.cond:
            return record.to_proto(request.response_view)

    def get_task(self, request: tasks_v2.GetTaskRequest) -> tasks_v2.Task:
        return self.store.get_task(request.name, request.response_view)

    def list_tasks(self, request: tasks_v2.ListTasksRequest) -> tasks_v2.ListTasksResponse:
        return self.store.list_tasks(
            request.parent, request.response_view, request.page_size, request.page_token
        )

    def delete_task(self, request: tasks_v2.DeleteTaskRequest) -> None:
        self.store.delete_task(request.name)

    def run_task(self, request: tasks_v2.RunTaskRequest) -> tasks_v2.Task:
        # Like Cloud Tasks: dispatch now, whatever the schedule, rate limits or pause state.
        store = self.store
        with store.cond:
            task = store.task(request.name)
            view = task.to_proto(request.response_view)
            if not task.in_flight:
                self.dispatcher.start_attempt(task, store.clock.now())
            return view

    def handler(self) -> grpc.GenericRpcHandler:
        methods: dict[str, Method] = {
            "CreateQueue": (
                self.create_queue,
                tasks_v2.CreateQueueRequest,
                tasks_v2.Queue.serialize,
            ),
            "GetQueue": (self.get_queue, tasks_v2.GetQueueRequest, tasks_v2.Queue.serialize),
            "ListQueues": (
                self.list_queues,
                tasks_v2.ListQueuesRequest,
                tasks_v2.ListQueuesResponse.serialize,
            ),
            "UpdateQueue": (
                self.update_queue,
                tasks_v2.UpdateQueueRequest,
                tasks_v2.Queue.serialize,
            ),
            "DeleteQueue": (self.delete_queue, tasks_v2.DeleteQueueRequest, _empty),
            "PurgeQueue": (self.purge_queue, tasks_v2.PurgeQueueRequest, tasks_v2.Queue.serialize),
            "PauseQueue": (self.pause_queue, tasks_v2.PauseQueueRequest, tasks_v2.Queue.serialize),
            "ResumeQueue": (
                self.resume_queue,
                tasks_v2.ResumeQueueRequest,
                tasks_v2.Queue.serialize,
            ),
            "CreateTask": (self.create_task, tasks_v2.CreateTaskRequest, tasks_v2.Task.serialize),
            "GetTask": (self.get_task, tasks_v2.GetTaskRequest, tasks_v2.Task.serialize),
            "ListTasks": (
                self.list_tasks,
                tasks_v2.ListTasksRequest,
                tasks_v2.ListTasksResponse.serialize,
            ),
            "DeleteTask": (self.delete_task, tasks_v2.DeleteTaskRequest, _empty),
            "RunTask": (self.run_task, tasks_v2.RunTaskRequest, tasks_v2.Task.serialize),
        }
        return generic_handler(SERVICE, methods)


#: An RPC method: (the function, the request message class, the response serializer).
Method = tuple[Callable[[Any], Any], Any, Callable[[Any], bytes]]


def generic_handler(service: str, methods: dict[str, Method]) -> grpc.GenericRpcHandler:
    """A gRPC service's unary methods, served with proto-plus message classes (no generated
    stubs), each behind _guard: the Cloud Tasks service here, the Cloud Scheduler one in
    scheduler.py."""
    return grpc.method_handlers_generic_handler(
        service,
        {
            name: grpc.unary_unary_rpc_method_handler(
                _guard(func),
                request_deserializer=request_type.deserialize,
                response_serializer=serializer,
            )
            for name, (func, request_type, serializer) in methods.items()
        },
    )


def _guard(func: Callable[[Any], Any]) -> Callable[[Any, grpc.ServicerContext], Any]:
    def call(request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return func(request)
        except ApiError as exc:
            context.abort(exc.code, exc.message)

    call.__name__ = func.__name__
    return call
