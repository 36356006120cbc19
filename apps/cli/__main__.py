"""``python -m apps.cli`` (and ``torchrun -m apps.cli``) runs the ``cola-workbench`` command."""
import sys

from .main import main

sys.exit(main())
