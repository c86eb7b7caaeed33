#!/usr/bin/env python
"""Management entry point of the cloudtask sample project (run it from anywhere)."""

import os
import sys
from pathlib import Path


def main() -> None:
    here = Path(__file__).resolve().parent
    # The project and its app live beside this file; put them on the path so the command works
    # from the repository root (`python sample_app/manage.py demo`) as well as from here.
    sys.path.insert(0, str(here))
    if (here.parent / "cloudtask" / "__init__.py").is_file():
        # In a checkout, run against the cloudtask beside this sample, not another installed copy.
        sys.path.insert(1, str(here.parent))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "sample_project.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
