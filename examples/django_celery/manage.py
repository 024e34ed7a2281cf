"""Django's command line for the shop: ``python -m examples.django_celery.manage migrate``."""

from __future__ import annotations

import os
import sys

from django.core.management import execute_from_command_line

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "examples.django_celery.settings")
    execute_from_command_line(sys.argv)
