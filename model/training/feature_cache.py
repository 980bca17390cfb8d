"""Frozen-feature cache for continual steps.

At step t >= 1 the backbone and pixel decoder are frozen, so their output for an (image, augmentation)
pair never changes (nor what the frozen decoder layers derive from it, nor the augmented target): it is
computed once, under no_grad, and reused while it fits the memory budget
(least recently used entries are evicted beyond it). This is what makes learning a class interactive.
"""

from collections import OrderedDict

import torch


def features_nbytes(entry) -> int:
    """Bytes of the tensors in an entry: a tensor, or tuples, lists and dicts of them, or an object with
    `tensors()` (the decoder's prepared memory)."""
    if isinstance(entry, torch.Tensor):
        return entry.numel() * entry.element_size()
    if isinstance(entry, dict):
        entry = list(entry.values())
    elif hasattr(entry, "tensors"):
        entry = entry.tensors()
    if isinstance(entry, (tuple, list)):
        return sum(features_nbytes(e) for e in entry)
    return 0


class FeatureCache:
    def __init__(self, budget_bytes: int):
        self.budget_bytes = int(budget_bytes)
        self._entries: OrderedDict = OrderedDict()
        self.nbytes = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key, compute):
        """The cached entry of `key`, or `compute()` (stored when it fits the budget)."""
        if key in self._entries:
            self._entries.move_to_end(key)
            self.hits += 1
            return self._entries[key]
        self.misses += 1
        features = compute()
        size = features_nbytes(features)
        if size <= self.budget_bytes:
            self._entries[key] = features
            self.nbytes += size
            while self.nbytes > self.budget_bytes:
                _, evicted = self._entries.popitem(last=False)
                self.nbytes -= features_nbytes(evicted)
        return features

    def clear(self) -> None:
        self._entries.clear()
        self.nbytes = 0
