"""The decorators, under the module name the original dj-cloud-task README gave them.

``from cloudtask import task`` is the documented spelling; this module keeps the seed's
``cloudtask.decorators.task`` working too.
"""

from .tasks import on_commit_task, task

__all__ = ["on_commit_task", "task"]
