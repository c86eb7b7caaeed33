"""A newcomer's tasks module, as the README's quickstart writes it."""

from cloudtask import CloudTaskRequest, task


@task
def ping(request: CloudTaskRequest) -> str:
    return "pong"
