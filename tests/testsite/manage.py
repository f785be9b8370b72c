#!/usr/bin/env python
"""manage.py of the test site, for the development server tests: ``python tests/testsite/manage.py runserver``."""

import os
import sys
from pathlib import Path

if __name__ == "__main__":
    # As in a project whose manage.py sits next to its packages: the repository root holds `tests`.
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.testsite.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
