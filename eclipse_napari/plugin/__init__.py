"""The napari side: the dock widget and what it drives (session, project folder, annotation and
prediction layers, legend, sample data). Only `widget`, `legend` and `qt_helpers` import Qt."""
