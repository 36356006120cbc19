"""CLI sub-commands of ``cola-workbench`` (one module each, registered in ``workbench.cli``)."""
