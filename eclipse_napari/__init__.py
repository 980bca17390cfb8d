"""napari plugin and command lines for ECLIPSE (see `model` for the headless core)."""
