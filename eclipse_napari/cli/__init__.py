"""The command lines (`python -m eclipse_napari.<name>` or the `eclipse-<name>` scripts)."""
