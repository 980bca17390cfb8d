"""Teaching a model a new class from a few painted examples (the headless core of the napari "Learn").

`config` holds the inputs and results (no torch, so a GUI can read the defaults without loading it);
`learn` holds `learn_class`.
"""
