"""cloudtask.backends.CloudTasksBackend: Django's tasks framework on cloudtask."""
