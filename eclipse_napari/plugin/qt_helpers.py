"""Small Qt layout helpers for the widget."""

from qtpy.QtWidgets import QGroupBox, QHBoxLayout, QPushButton, QVBoxLayout, QWidget


def button(text: str, slot) -> QPushButton:
    b = QPushButton(text)
    b.clicked.connect(lambda *_: slot())
    return b


def row(*widgets) -> QWidget:
    r = QWidget()
    layout = QHBoxLayout(r)
    layout.setContentsMargins(0, 0, 0, 0)
    for w in widgets:
        layout.addWidget(w)
    return r


def box(title: str, *items) -> QGroupBox:
    """A titled group of widgets and layouts, stacked vertically."""
    group = QGroupBox(title)
    layout = QVBoxLayout(group)
    for item in items:
        if isinstance(item, QWidget):
            layout.addWidget(item)
        else:
            layout.addLayout(item)
    return group
