"""Headless ECLIPSE: continual panoptic segmentation by visual prompt tuning, in plain PyTorch.

This package never imports napari or Qt.
"""
