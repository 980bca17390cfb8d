"""How one inference of the model becomes a panoptic result: ECLIPSE's logit manipulation among the query
groups and Mask2Former's panoptic merge, steps laid over the prediction before them, then each dense
step's segments (`EclipseModel` inherits these; they read only its groups, classes, deltas and flags)."""

import torch

from .dense_segments import DenseSegment, dense_maps, dense_segments
from .logit_manipulation import manipulate_logits
from .outputs import RawPrediction
from .postprocess import PanopticResult, paint_segments, panoptic_merge, resize_mask_logits


class Merging:
    """The merge of an `EclipseModel` (a mixin: the model holds `groups`, `classes`, `class_ids`, `deltas` and
    `old_groups_keep_no_object`)."""

    def merge(
        self,
        raw: RawPrediction,
        index: int = 0,
        deltas: list[float] | None = None,
        output_size: tuple[int, int] | None = None,
        object_threshold: float = 0.0,
        overlap_threshold: float = 0.0,
        masks: torch.Tensor | None = None,
    ) -> PanopticResult:
        """Panoptic result of image `index` of an inference, after logit manipulation with `deltas`
        (default: the model's own); steps that lay over the previous prediction paint their segments
        over it, then each dense step's segments are laid over it, in step order.
        `masks`: this image's mask logits already resized to `output_size` (`resized_masks`), for
        merging one inference with many deltas."""
        deltas = self.deltas if deltas is None else [float(d) for d in deltas]
        size = output_size or raw.image_size
        if masks is None:
            masks = self.resized_masks(raw, index, size)
        is_thing = torch.tensor([c.is_thing for c in self.classes])
        overlaps, min_areas = self._overlap_thresholds(raw, overlap_threshold), self._min_areas(raw, size)

        def merged(groups: int) -> PanopticResult:
            logits, rows = self._group_logits(raw, index, deltas, groups)
            return panoptic_merge(logits, masks[:rows], is_thing, object_threshold, _rows(overlaps, rows),
                                  _rows(min_areas, rows))

        query = [t for t, g in enumerate(self.groups) if g.num_queries]
        together = self._merged_together(query)
        result = merged(together)
        for k in range(together, len(query)):  # steps laid over the prediction before them
            t, step = query[k], merged(k + 1)
            self._lay_over(result, step, t)
        dense_groups = [(t, g) for t, g in enumerate(self.groups) if g.num_queries == 0]
        # The query masks dense segments may snap to: the same for every dense step, so made once.
        query_masks = (masks > 0).cpu().numpy() if any(g.rule.snap_iou > 0 for _, g in dense_groups) else None
        for (t, g), dense, stride in zip(dense_groups, raw.dense_logits, raw.dense_strides):
            probs, distances = dense_maps(dense[index], stride, raw.padded_size, raw.image_size, size)
            held, owner = result.confidence.cpu().numpy(), result.semantic.cpu().numpy()
            segments = dense_segments(probs, distances, [c.is_thing for c in g.classes], g.rule, held, owner,
                                      query_masks)
            paint_segments(result, segments, self.class_ids(t), [c.is_thing for c in g.classes])
        return result

    def _lay_over(self, result: PanopticResult, step: PanopticResult, t: int) -> None:
        """Paints group `t`'s segments of `step` (its merge with the groups before it) over `result`, in
        place, where the group's claim rule lets them take the pixel from what `result` holds there."""
        group, ids = self.groups[t], self.class_ids(t)
        pan = step.panoptic_seg.cpu().numpy()
        allowed = True
        if group.rule is not None:
            allowed = group.rule.claim(step.confidence.detach().cpu().numpy()[None],
                                       result.confidence.detach().cpu().numpy(), result.semantic.cpu().numpy())
        segments = [DenseSegment(ids.index(s.category_id), (pan == s.id) & allowed, s.score)
                    for s in step.segments if s.category_id in ids]
        paint_segments(result, [s for s in segments if s.mask.any()], ids, [c.is_thing for c in group.classes])

    @staticmethod
    def resized_masks(raw: RawPrediction, index: int, size) -> torch.Tensor:
        """Image `index`'s query mask logits at `size` (what `merge` works on)."""
        return resize_mask_logits(raw.mask_logits[index], raw.padded_size, raw.image_size, tuple(size))

    def _overlap_thresholds(self, raw: RawPrediction, overlap_threshold: float) -> float | torch.Tensor:
        """`overlap_threshold`, or per query where a group sets its own (an adaptive step's queries start
        several on one instance: a duplicate left with little of its own mask is dropped, as
        Mask2Former's panoptic inference drops it)."""
        return self._per_query(raw, lambda g: max(overlap_threshold, g.merge_overlap), overlap_threshold)

    def _min_areas(self, raw: RawPrediction, size) -> float | torch.Tensor:
        """Per query, the fewest pixels at `size` its segment needs (a group's `min_area` is in pixels at
        the image's own size); 0.0 where no group sets one."""
        scale = size[0] * size[1] / (raw.image_size[0] * raw.image_size[1])
        return self._per_query(raw, lambda g: float(g.min_area) * scale, 0.0)

    def _per_query(self, raw: RawPrediction, value, default: float) -> float | torch.Tensor:
        """`value(group)` repeated for each query of each query group of `raw` ([Q]), or `default` (one
        value for every query) where no group's value differs from it."""
        groups = [g for g in self.groups if g.num_queries > 0]
        values = [value(g) for g in groups]
        if all(v == default for v in values):
            return default
        if len(raw.group_queries) != len(groups):  # made by another model: its queries are not these
            raise ValueError(f"the prediction holds {len(raw.group_queries)} query groups, the model {len(groups)}")
        return torch.cat([torch.full((n,), v) for n, v in zip(raw.group_queries, values)])

    def _group_logits(self, raw: RawPrediction, index: int, deltas: list[float],
                      groups: int) -> tuple[torch.Tensor, int]:
        """(class logits [rows, K+1] after logit manipulation, rows) of the first `groups` query groups of
        image `index`: all of them as the model predicts; fewer as the model before the later steps did,
        each query's no-object logit from its own group's head (the newest of them served then)."""
        every = sum(1 for g in self.groups if g.num_queries)
        rows = sum(raw.group_queries[:groups]) if groups < every else raw.logits.shape[1]
        logits = raw.logits[index : index + 1, :rows]
        if groups < every:
            if raw.own_no_object is None:
                raise ValueError("this prediction was made before a step was laid over the previous prediction: "
                                 "infer it again")
            logits = torch.cat([logits[..., :-1], raw.own_no_object[index : index + 1, :rows, None]], -1)
        own = self._own_no_object(raw, index)
        return self._manipulate(logits, deltas, None if own is None else own[:, :rows], groups)[0], rows

    def _needs_own_no_object(self) -> bool:
        """Whether merging reads each query's no-object from its own group's head (`RawPrediction`)."""
        return self.old_groups_keep_no_object or any(getattr(g, "lays_over_previous", False) for g in self.groups)

    def _own_no_object(self, raw: RawPrediction, index: int) -> torch.Tensor | None:
        if not self.old_groups_keep_no_object:
            return None
        if raw.own_no_object is None:
            raise ValueError("this prediction was made before old groups kept their own no-object verdict: "
                             "infer it again")
        return raw.own_no_object[index : index + 1]

    def _merged_together(self, query: list[int]) -> int:
        """How many of the query groups `query` (indices, in order) merge together as published: all but
        the newest run of steps that lay their segments over the prediction before them
        (`lays_over_previous`; each of those is merged with the groups before it, then only its own
        segments are painted over that prediction, so old outputs change only where it puts one)."""
        n = len(query)
        while n > 1 and self.groups[query[n - 1]].lays_over_previous:
            n -= 1
        return n

    def _manipulate(self, logits: torch.Tensor, deltas: list[float],
                    own_no_object: torch.Tensor | None = None, groups: int | None = None) -> torch.Tensor:
        """Logit manipulation among the query groups only, as if dense steps were not there (they make
        no query predictions); their class columns are then set to -inf, so no query takes them. With
        `groups`, among the first `groups` query groups only (`logits` holds their rows): the columns
        of the later ones are set to -inf as well."""
        every = self.groups
        query = [t for t, g in enumerate(every) if g.num_queries][:groups]
        if len(query) == len(every):
            return manipulate_logits(logits, [g.num_queries for g in every], [g.num_classes for g in every], deltas,
                                     own_no_object)
        columns = [c - 1 for t in query for c in self.class_ids(t)] + [logits.shape[-1] - 1]
        sub = manipulate_logits(logits[..., columns], [every[t].num_queries for t in query],
                                [every[t].num_classes for t in query], [deltas[t] for t in query], own_no_object)
        out = torch.full_like(logits, float("-inf"))
        out[..., columns] = sub
        return out


def _rows(value: float | torch.Tensor, rows: int) -> float | torch.Tensor:
    """A per-query value ([Q]) for the first `rows` queries; a single value as it is."""
    return value[:rows] if isinstance(value, torch.Tensor) else value
