"""workbench: the research layer over cola_core — encode/decode, latent algebra, hooks, diagnostics."""
