"""Sub-commands of ``cola-workbench``: each module has ``register(subparsers)`` (see ``apps.cli.main``)."""
