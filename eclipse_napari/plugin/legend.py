"""The class legend: colour, name, thing/stuff, step, and the share of pixels in the last prediction."""

from qtpy.QtGui import QColor
from qtpy.QtWidgets import QAbstractItemView, QHeaderView, QTableWidget, QTableWidgetItem


class Legend(QTableWidget):
    def __init__(self):
        super().__init__(0, 4)
        self.setHorizontalHeaderLabels(["", "class", "kind", "pixels"])
        self.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.setSelectionMode(QAbstractItemView.NoSelection)
        self.verticalHeader().setVisible(False)
        header = self.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeToContents)
        header.setSectionResizeMode(1, QHeaderView.Stretch)
        self.setMinimumHeight(170)
        self.source = None  # the image whose prediction the pixel shares describe

    def set_classes(self, classes, pixel_counts=None, source: str | None = None) -> None:
        """One row per class; with counts (index = class id, from the prediction of image `source`) the
        classes present come first."""
        self.source = source if pixel_counts is not None else None
        self.setToolTip(f"pixels: shares in the prediction of {source}" if self.source else "")
        rows = list(enumerate(classes, start=1))
        total = None
        if pixel_counts is not None:
            total = max(1, int(pixel_counts.sum()))
            rows.sort(key=lambda r: -int(pixel_counts[r[0]]))
        self.setRowCount(len(rows))
        for row, (class_id, spec) in enumerate(rows):
            swatch = QTableWidgetItem("")
            swatch.setBackground(QColor(*spec.color))
            share = "" if total is None else f"{100 * int(pixel_counts[class_id]) / total:.1f}%"
            for col, item in enumerate((swatch, QTableWidgetItem(spec.name),
                                        QTableWidgetItem("thing" if spec.is_thing else "stuff"),
                                        QTableWidgetItem(share))):
                self.setItem(row, col, item)
