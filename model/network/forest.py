"""A random forest as tensors: fitted by scikit-learn, saved as plain tensors, walked by scikit-learn's
compiled tree code on the CPU and by torch elsewhere.

A step file must load without unpickling (safetensors), so a fitted forest is kept as the arrays of
its trees, all trees' nodes in one table: for node n, `feature[n]` and `threshold[n]` (go to
`branches[n, 0]` when x[feature] <= threshold, else `branches[n, 1]`; a leaf's children are itself)
and `value[n]` (the class shares of the training pixels that reached it). `roots[t]` is tree t's first
node. The forest's prediction is the mean of its trees' leaf shares, as scikit-learn's
`predict_proba`, exactly: its float64 thresholds are stored as the largest float32 not above them,
which splits float32 features the same way.

On the CPU the trees are walked by scikit-learn's compiled tree code (`Tree.apply`, given these
tables: about 4x faster than gathers in torch, measured on 65,536 pixels x 50 trees of depth 16 at one
thread); elsewhere, or where scikit-learn cannot take the tables, by torch (`walk`). Both give the
same leaves.
"""

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch import nn

_IMPORTING = threading.Lock()


def import_scikit_learn() -> None:
    """Imports the parts of scikit-learn that forests use (fitting and walking trees), once, under a lock.
    It is imported late (about 2 s on one core); the napari widget imports it ahead in a background
    thread, and two threads importing one package at once may see it half initialised."""
    with _IMPORTING:
        import sklearn.ensemble  # noqa: F401
        import sklearn.tree._tree  # noqa: F401


_CHUNK = 16384  # pixels evaluated at once (bounds the [pixels, trees] index tables)
_SUMS = 4  # running sums of trees on the CPU (threads share them out)


class TreeEnsemble(nn.Module):
    """[N, F] float features -> [N, K] class probabilities. Built empty with the sizes a step file
    records (`layout`), then filled by `set_trees` or by loading the step's tensors."""

    def __init__(self, nodes: int = 0, trees: int = 0, classes: int = 2, depth: int = 0):
        super().__init__()
        self.register_buffer("depth", torch.tensor(int(depth), dtype=torch.int64))  # the deepest tree's depth
        self.register_buffer("feature", torch.zeros(nodes, dtype=torch.int32))
        self.register_buffer("threshold", torch.zeros(nodes, dtype=torch.float32))
        self.register_buffer("branches", torch.zeros(nodes, 2, dtype=torch.int32))
        self.register_buffer("value", torch.zeros(nodes, classes, dtype=torch.float32))
        self.register_buffer("roots", torch.zeros(trees, dtype=torch.int32))
        self._compiled: tuple | None = None  # (the tables' identity, scikit-learn trees) once built

    @property
    def fitted(self) -> bool:
        return self.roots.numel() > 0

    def layout(self) -> dict:
        return {"nodes": self.feature.numel(), "trees": self.roots.numel(), "classes": self.value.shape[1],
                "depth": int(self.depth)}

    def check(self, num_features: int) -> None:
        """Raises ValueError unless the tables describe trees over `num_features` features (a damaged
        step file would otherwise fail, or index out of range, at prediction)."""
        nodes = self.feature.numel()
        if self.threshold.numel() != nodes or self.branches.shape != (nodes, 2) or self.value.shape[0] != nodes:
            raise ValueError("the forest's node tables differ in length")
        if nodes and (int(self.feature.min()) < 0 or int(self.feature.max()) >= num_features):
            raise ValueError(f"the forest reads features outside 0..{num_features - 1}")
        if nodes and (int(self.branches.min()) < 0 or int(self.branches.max()) >= nodes):
            raise ValueError("the forest's branches point outside its nodes")
        if self.roots.numel() and (int(self.roots.min()) < 0 or int(self.roots.max()) >= nodes):
            raise ValueError("the forest's roots point outside its nodes")
        if not bool(torch.isfinite(self.value).all()) or not bool(torch.isfinite(self.threshold).all()):
            raise ValueError("the forest holds non-finite values")
        if int(self.depth) < 0 or int(self.depth) > 64:
            raise ValueError(f"the forest's depth {int(self.depth)} is out of range")
        if self.roots.numel() and not _within_depth(self.branches.cpu().numpy(), self.roots.cpu().numpy(),
                                                    int(self.depth)):
            raise ValueError(f"the forest's trees are deeper than its recorded depth {int(self.depth)}")

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # A forest's size is part of what it is: take the sizes of the tables loaded (a refit forest put
        # back, say). Step files are checked against their recorded layout before this (load_exact).
        feature, roots = state_dict.get(prefix + "feature"), state_dict.get(prefix + "roots")
        if feature is not None and roots is not None:
            self.resize(feature.numel(), roots.numel())
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def resize(self, nodes: int, trees: int) -> None:
        """Empty tables of these sizes (what loading a forest of those sizes into this one needs)."""
        classes, device = self.value.shape[1], self.value.device
        self.feature = torch.zeros(nodes, dtype=torch.int32, device=device)
        self.threshold = torch.zeros(nodes, dtype=torch.float32, device=device)
        self.branches = torch.zeros(nodes, 2, dtype=torch.int32, device=device)
        self.value = torch.zeros(nodes, classes, dtype=torch.float32, device=device)
        self.roots = torch.zeros(trees, dtype=torch.int32, device=device)

    def set_trees(self, forests, classes: int) -> None:
        """Takes the trees of fitted `sklearn.ensemble.RandomForestClassifier`s (one, or a list whose
        trees then vote together) whose labels are among 0..classes-1 (a label missing from a forest's
        training pixels gets probability 0 from its trees)."""
        features, thresholds, children, values, roots = [], [], [], [], []
        offset, depth = 0, 0
        forests = forests if isinstance(forests, (list, tuple)) else [forests]
        for forest in forests:
            columns = np.asarray(forest.classes_, dtype=np.int64)
            for estimator in forest.estimators_:
                tree = estimator.tree_
                n = tree.node_count
                leaf = tree.children_left < 0
                shares = tree.value[:, 0, :].astype(np.float64)
                shares /= np.maximum(shares.sum(1, keepdims=True), 1e-12)
                value = np.zeros((n, classes), np.float32)
                value[:, columns] = shares
                roots.append(offset)
                own = np.arange(n) + offset
                features.append(np.where(leaf, 0, tree.feature))
                thresholds.append(_float32_at_most(np.where(leaf, 0.0, tree.threshold)))
                children.append(np.stack([np.where(leaf, own, tree.children_left + offset),
                                          np.where(leaf, own, tree.children_right + offset)], 1))
                values.append(value)
                offset += n
                depth = max(depth, int(tree.max_depth))
        device = self.feature.device
        self.feature = torch.from_numpy(np.concatenate(features).astype(np.int32)).to(device)
        self.threshold = torch.from_numpy(np.concatenate(thresholds)).to(device)
        self.branches = torch.from_numpy(np.concatenate(children).astype(np.int32)).to(device)
        self.value = torch.from_numpy(np.concatenate(values)).to(device)
        self.roots = torch.tensor(roots, dtype=torch.int32, device=device)
        self.depth = torch.tensor(depth, dtype=torch.int64, device=device)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[N, F] -> [N, K] class probabilities: the mean of the trees' leaf shares."""
        if not self.fitted:
            raise ValueError("this forest has not been fitted")
        trees = self._sklearn_trees() if x.device.type == "cpu" else None
        if trees is None:
            return self.walk(x)
        rows = np.ascontiguousarray(x.detach().float().numpy())
        if rows.ndim != 2 or rows.shape[1] <= int(self.feature.max()):
            raise ValueError(f"the forest reads {int(self.feature.max()) + 1} features, got rows of shape {tuple(rows.shape)}")
        values, roots = self.value.cpu().numpy().astype(np.float64), self.roots.cpu().numpy().astype(np.int64)

        def total(share: range) -> np.ndarray:  # scikit-learn's tree code releases the GIL
            out = np.zeros((rows.shape[0], values.shape[1]))
            for t in share:
                out += values[trees[t].apply(rows) + roots[t]]
            return out

        # A fixed split of the trees into running sums, added in order: the same floats whatever the
        # number of threads that compute them.
        shares = [range(g, len(trees), _SUMS) for g in range(min(_SUMS, len(trees)))]
        workers = max(1, min(torch.get_num_threads(), len(shares)))
        if workers == 1:
            parts = [total(share) for share in shares]
        else:
            with ThreadPoolExecutor(workers) as pool:
                parts = list(pool.map(total, shares))
        summed = parts[0]
        for part in parts[1:]:
            summed = summed + part
        return torch.from_numpy((summed / len(trees)).astype(np.float32))

    @torch.no_grad()
    def walk(self, x: torch.Tensor) -> torch.Tensor:
        """The same prediction by gathers in torch (any device)."""
        if not self.fitted:
            raise ValueError("this forest has not been fitted")
        x = x.float()
        feature, children, roots = self.feature.long(), self.branches.long().reshape(-1), self.roots.long()
        out = []
        for rows in torch.split(x, _CHUNK):
            node = roots.expand(rows.shape[0], -1)  # [n, T]
            for _ in range(int(self.depth)):
                go_right = rows.gather(1, feature[node]) > self.threshold[node]
                node = children[2 * node + go_right]
            out.append(self.value[node].mean(1))
        return torch.cat(out) if out else x.new_zeros(0, self.value.shape[1])

    def _sklearn_trees(self) -> list | None:
        """The tables as scikit-learn trees (built once per state of the tables), or None where they
        cannot be: scikit-learn missing or refusing them (the test of this module checks that the
        installed version takes them), or tables that are not plain trees of at most the recorded depth
        (every forest `set_trees` writes is; a damaged one could send compiled code round a loop or out
        of bounds)."""
        tables = (self.feature, self.threshold, self.branches, self.value, self.roots)
        # The tensors themselves (kept, so their identity cannot pass to new ones) and their in-place
        # version counters (inference tensors have none; they are replaced, never changed, on loading).
        state = tuple((t, None if t.is_inference() else t._version) for t in tables)
        if self._compiled is not None and len(self._compiled[0]) == len(state) and all(
                a is b and u == v for (a, u), (b, v) in zip(self._compiled[0], state)):
            return self._compiled[1]
        try:
            trees = _as_sklearn_trees(*(t.cpu().numpy() for t in tables), int(self.depth))
        except (ImportError, TypeError, ValueError):
            trees = None  # scikit-learn missing, or refusing the tables: torch walks them
        self._compiled = (state, trees)
        return trees


def _as_sklearn_trees(feature, threshold, branches, value, roots, depth: int) -> list | None:
    """scikit-learn `Tree`s of the tables (thresholds already float32 values, so float32 features split
    as in the tables), or None where a tree's nodes are not one block [roots[t], roots[t + 1])."""
    import_scikit_learn()
    from sklearn.tree._tree import NODE_DTYPE, Tree

    starts = roots.astype(np.int64)
    ends = np.append(starts[1:], len(feature))
    if starts[0] != 0 or (ends <= starts).any() or branches.min() < 0 or branches.max() >= len(feature):
        return None
    if not _within_depth(branches, roots, depth):
        return None
    classes, features = value.shape[1], int(feature.max(initial=0)) + 1
    trees = []
    for a, b in zip(starts, ends):
        own = np.arange(a, b)
        left, right = branches[a:b, 0].astype(np.int64), branches[a:b, 1].astype(np.int64)
        leaf = (left == own) & (right == own)
        inner = ~leaf
        if ((left[inner] <= own[inner]) | (left[inner] >= b) | (right[inner] <= own[inner]) | (right[inner] >= b)).any():
            return None  # a branch leaving its tree, or pointing back: not a tree scikit-learn can walk
        if (feature[a:b][inner] < 0).any():
            return None  # compiled code reads features without bounds checks
        nodes = np.zeros(b - a, dtype=NODE_DTYPE)
        nodes["left_child"] = np.where(leaf, -1, left - a)
        nodes["right_child"] = np.where(leaf, -1, right - a)
        nodes["feature"] = np.where(leaf, -2, feature[a:b])
        nodes["threshold"] = np.where(leaf, -2.0, threshold[a:b].astype(np.float64))
        if "missing_go_to_left" in nodes.dtype.names:
            nodes["missing_go_to_left"] = 1  # as `walk`: NaN > threshold is false
        tree = Tree(features, np.array([classes], dtype=np.intp), 1)
        tree.__setstate__({"max_depth": depth, "node_count": int(b - a), "nodes": nodes,
                           "values": np.ascontiguousarray(value[a:b, None, :], dtype=np.float64)})
        trees.append(tree)
    return trees


def _within_depth(branches: np.ndarray, roots: np.ndarray, depth: int) -> bool:
    """Whether every path from a root reaches a leaf (a node whose branches are itself) within `depth`
    steps: what `TreeEnsemble.walk` assumes, and what keeps a compiled walk finite."""
    nodes = np.unique(roots.astype(np.int64))
    for _ in range(depth):
        inner = nodes[(branches[nodes, 0] != nodes) | (branches[nodes, 1] != nodes)]
        if inner.size == 0:
            return True
        nodes = np.unique(branches[inner].reshape(-1).astype(np.int64))
    return bool(((branches[nodes, 0] == nodes) & (branches[nodes, 1] == nodes)).all())


def _float32_at_most(values: np.ndarray) -> np.ndarray:
    """The largest float32 not above each float64: for a float32 x, x <= t exactly when x <= this."""
    rounded = values.astype(np.float32)
    above = rounded.astype(np.float64) > values
    rounded[above] = np.nextafter(rounded[above], np.float32(-np.inf))
    return rounded
