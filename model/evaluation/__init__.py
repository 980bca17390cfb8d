"""Evaluation: panoptic quality and mIoU accumulators, PQ over COCO-panoptic folders, evaluating a model
on labelled images and choosing the logit-manipulation deltas from held-out images."""
