from cloudtask import CloudTaskRequest, on_commit_task


@on_commit_task(sender="tests.Untracked", fields=["name"])
def untracked_name_changed(request: CloudTaskRequest, instance: object) -> None:
    pass
