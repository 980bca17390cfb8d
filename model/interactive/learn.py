"""Teaching new classes from a few painted examples: the headless core of the napari "Learn" and
"Refine" buttons.

`learn_classes` adds one step for the classes painted (one or several), trains it on the examples
(frozen features cached, so iterations after the first pass cost only the small trainable part) and
reports whether the old classes' predictions changed, on the painted images and, apart, on other open
images. `refine_last_step` retrains the newest step on more or corrected painting, starting from its
weights. The default step is dense (a per-pixel head, see `model.network.dense_head`);
`LearnConfig.prompts()` gives the published prompt step and `LearnConfig.adaptive()` a prompt step with
image-adaptive queries (`model.network.adaptive_queries`); their delta is then chosen on the examples.
Cancel or any failure leaves the model exactly as before (the new step removed, a refined step's
tensors and rule put back).
"""

import time
from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np
import torch

from ..evaluation.deltas import select_deltas
from ..network.eclipse import EclipseModel, RawPrediction
from ..training.criterion import LossConfig
from ..training.dense import dense_targets
from ..training.engine import TrainConfig, train
from ..training.pixel_stage import PixelFitConfig, fit_pixel_stage
from ..training.progress import Progress, RunState
from .config import Example, LearnConfig, LearnResult, NewClass, OtherImages, PaintedImages
from .crops import centre_crop, crop_to_painting
from .examples import ExampleSet, check_examples, image_digest, known_background, labelled, merge_classes
from .frozen import FeatureStore, FrozenImages
from .negatives import choose_thresholds, find_look_alikes, instance_rule, old_class_negatives


def learn_class(model: EclipseModel, name: str, is_thing: bool, examples: Sequence[Example],
                config: LearnConfig = LearnConfig(), *, color=None, **kwargs) -> LearnResult:
    """Teaches the model one new class from painted examples (see `learn_classes`)."""
    return learn_classes(model, [NewClass(name, is_thing, list(examples), color)], config, **kwargs)


def learn_classes(
    model: EclipseModel,
    classes: Sequence[NewClass],
    config: LearnConfig = LearnConfig(),
    *,
    context: Sequence = (),
    device="cpu",
    callback: Callable[[Progress], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    features: FeatureStore | None = None,
) -> LearnResult:
    """Teaches the model new classes in one step. `context`: other images (unpainted; they may show the
    classes too): Learn takes what the model already holds confidently there as negatives, so
    the new classes do not spill onto what the model knew; the result reports what the step changed
    there (`LearnResult.others`) apart from the painted images. `features`: where the frozen features of
    whole images are kept across calls (a session's, filled by its predictions): taken from there, and
    left there, instead of made anew (the same tensors either way)."""
    classes = _checked(model, classes)
    names, is_thing = [c.name.strip() for c in classes], [c.is_thing for c in classes]
    known = {c.name for c in model.classes}
    taken = sorted(n for n in names if n in known)
    if taken:
        raise ValueError(f"a class named {taken[0]!r} already exists")
    colors = [c.color for c in classes]  # None: the model picks a colour unlike its classes
    prepared = _Prepared(model, classes, config, context, features)
    dense = config.learner == "dense"
    if dense:
        with torch.random.fork_rng():  # the new head's initial weights depend on the seed only
            torch.manual_seed(config.seed)
            model.add_dense_step(names, is_thing, colors, config.dense_hidden, config.dense_fine, config.dense_inputs,
                                 prepared.rule, config.dense_filters, config.dense_forest_trees > 0)
    elif config.learner == "adaptive":
        with torch.random.fork_rng():  # the scorer's initial weights depend on the seed only
            torch.manual_seed(config.seed)
            model.add_adaptive_step(names, is_thing, config.adaptive_queries, colors)
    else:
        model.add_step(names, is_thing, config.num_prompts, colors)
    if not dense:  # removing the step (undo, cancel, failure) restores the model's choice
        model.old_groups_keep_no_object = config.old_groups_keep_no_object
        model.groups[-1].lays_over_previous = config.lay_over_previous
    try:  # from here on, any failure removes the step again
        result = prepared.train_and_report(model, device, callback, cancel)
    except BaseException:
        model.remove_last_step()
        raise
    if result.state == RunState.CANCELLED:
        model.remove_last_step()
    return result


def refine_last_step(
    model: EclipseModel,
    classes: Sequence[NewClass],
    config: LearnConfig = LearnConfig(),
    *,
    context: Sequence = (),
    device="cpu",
    callback: Callable[[Progress], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    features: FeatureStore | None = None,
) -> LearnResult:
    """Retrains the newest step on its classes' (more, or corrected) painting, from its current weights.
    `classes` are the step's classes in order, with all their examples. The step's kind (dense or
    prompts) is kept. Cancel or a failure puts its tensors, rule and deltas back exactly; undo still
    removes the whole step."""
    if model.num_steps == 0:
        raise ValueError("there is no learned step to refine: Learn a class first")
    group = model.groups[-1]
    step_names = [c.name for c in group.classes]
    classes = _checked(model, classes)
    if [c.name.strip() for c in classes] != step_names:
        raise ValueError(f"the newest step holds {step_names}; refine it with examples of exactly those classes, "
                         f"got {[c.name for c in classes]}")
    if [c.is_thing for c in classes] != [c.is_thing for c in group.classes]:
        raise ValueError("refining cannot change whether a class is a thing or stuff")
    dense = group.num_queries == 0
    if dense and not hasattr(group.head, "forward_both"):
        raise ValueError("the newest step was learned by an earlier version of this program and cannot be "
                         "retrained: remove it and Learn its classes again (the painting is kept)")
    if config.learner != group.learner:  # the step's kind decides; keep the iterations
        config = LearnConfig.for_learner(group.learner, iterations=config.iterations)
    saved = {k: v.detach().clone() for k, v in group.state_dict().items()}
    saved_rule, saved_deltas = getattr(group, "rule", None), model.deltas
    saved_min_area = getattr(group, "min_area", 0.0)
    # The step's own predictions are not "what the model knew": the references come from the model as
    # it was before the step, so negatives and reports describe the old classes only.
    del model.decoder.groups[-1]
    if group.previous_deltas is not None:
        model.set_deltas(group.previous_deltas)
    try:
        prepared = _Prepared(model, classes, config, context, features)
    finally:
        model.decoder.groups.append(group)
        model.set_deltas(saved_deltas)
        model.freeze_for_training()
    if dense:
        group.rule = prepared.rule

    def put_back():
        group.load_state_dict(saved)
        group.rule = saved_rule
        if not dense:
            group.min_area = saved_min_area
        model.set_deltas(saved_deltas)
        model.eval()

    try:
        result = prepared.train_and_report(model, device, callback, cancel)
    except BaseException:
        put_back()
        raise
    if result.state == RunState.CANCELLED:
        put_back()
    result.refined = result.state == RunState.DONE
    return result


def _checked(model, classes: Sequence[NewClass]) -> list[NewClass]:
    classes = list(classes)
    if not classes:
        raise ValueError("no classes to learn: name a class and paint it")
    names = [c.name.strip() for c in classes]
    if any(not n for n in names):
        raise ValueError("every new class needs a name")
    if len(set(names)) != len(names):
        raise ValueError(f"class names repeat: {names}")
    for c in classes:
        check_examples(c.examples, c.name if len(classes) > 1 else "")
    return classes


class _Prepared:
    """Everything a step's training needs that does not depend on the step's own tensors: examples
    (merged per image, cropped when large), the model's predictions before the step, negatives, the
    post-processing rule."""

    def __init__(self, model, classes: list[NewClass], config: LearnConfig, context: Sequence,
                 features: FeatureStore | None = None):
        self.config = config
        self.is_thing = [c.is_thing for c in classes]
        self.examples = crop_to_painting(merge_classes(classes), config.max_side)
        self.context = [centre_crop(c, config.max_side) for c in context]
        # Each image's frozen features are made once: the predictions before the step come from them, and
        # after training the delta choice and the reports only run the decoder and heads on them again.
        self.dense = config.learner == "dense"
        self.frozen = FrozenImages(model, [e.image for e in self.examples] + self.context,
                                   dense=config.learner in ("dense", "adaptive") or model.needs_dense_inputs,
                                   store=features)
        self.reference = [self.frozen.predict(model, k) for k in range(len(self.examples))]
        self.context_refs = [self.frozen.predict(model, len(self.examples) + k)  # for negatives and the report
                             for k in range(len(self.context))]
        self.weights, self.rule = None, None
        # Both learners read the painting as painted: unpainted pixels unknown unless an image is complete,
        # known background from strokes, the band around painted instances, what the model holds for sure
        # (on the painted images and on up to `max_context` other open images).
        used = _spread(list(range(len(self.context))), config.max_context)
        look_alikes = find_look_alikes(self.examples, self.reference)
        self.examples, self.extra, kept = old_class_negatives(
            self.examples, self.reference, [self.context[i] for i in used], [self.context_refs[i] for i in used],
            look_alikes)
        self.extra_of = [used[k] for k in kept]  # which context image each extra example is
        if not any(known_background(e, self.is_thing).any() for e in self.examples + self.extra):
            raise ValueError("nothing says where the new classes are not: paint some background ('Paint "
                             "background'), or mark an image whose every instance is painted as complete")
        if self.extra:  # the painted examples make two thirds of what is drawn
            self.weights = ([2 / 3 / len(self.examples)] * len(self.examples)
                            + [1 / 3 / len(self.extra)] * len(self.extra))
        # A dense step's post-processing; a prompt step laid over the previous prediction takes pixels by
        # its claim rule.
        self.rule = instance_rule(self.examples, self.is_thing, look_alikes, config)
        # A prompt step's fragments: segments below the dense step's size rule (a share of the smallest
        # painted instance) are dropped. Only the adaptive step sets it: several of its queries may start
        # on one instance, and the leftovers of the losers are small.
        self.min_area = self.rule.min_area if config.learner == "adaptive" else 0.0

    def train_and_report(self, model, device, callback, cancel) -> LearnResult:
        config = self.config
        class_ids = model.class_ids(model.num_steps)
        data = ExampleSet(list(self.examples) + self.extra, class_ids, self.is_thing, config.augment,
                          self.weights)
        train_config = TrainConfig(
            iterations=config.iterations, batch_size=config.batch_size, lr=config.lr, seed=config.seed,
            clip_norm=config.clip_norm, augment_variants=config.augment_variants, dense_crop=config.dense_crop,
            # the published losses' settings; a dense step has its own per-pixel losses (training.dense)
            **({} if self.dense else {"loss": LossConfig(num_points=config.num_points,
                                                          deep_supervision=config.deep_supervision)}),
        )
        result = train(model, data, train_config, device=device, callback=callback, cancel=cancel)
        honest = None  # the painted images' dense logits with the pixel forest cross-fitted
        if result.state == RunState.DONE and self.dense and model.groups[-1].head.pixel_stage is not None:
            if cancel is not None and cancel():
                result.state = RunState.CANCELLED
            else:
                start = time.perf_counter()
                model.eval()
                honest = fit_pixel_stage(model.groups[-1].head, self._pixel_entries(model, data, class_ids),
                                         PixelFitConfig(trees=config.dense_forest_trees, seed=config.seed,
                                                        positives=config.dense_forest_positives,
                                                        negatives=config.dense_forest_negatives,
                                                        boundary_share=config.dense_forest_boundary,
                                                        fixed_shares=self._fixed_shares()),
                                         threads=torch.get_num_threads(), honest=len(self.examples))
                result.seconds += time.perf_counter() - start
        if result.state == RunState.CANCELLED:
            return LearnResult(RunState.CANCELLED, None, None, result.seconds, result.losses, None)
        model.eval()
        raws = [self.frozen.infer(model, k) for k in range(len(self.frozen))]  # every image, after the step
        painted, other = raws[: len(self.examples)], raws[len(self.examples):]
        table = []
        if self.dense:
            # Thresholds are chosen on the painting; with a pixel forest, on its cross-fitted predictions
            # (a forest predicting the very pixels it was fitted on is sure of them, and thresholds chosen
            # there were too strict for any other image).
            judged = painted if honest is None else [_with_dense_logits(r, h) for r, h in zip(painted, honest)]
            choose_thresholds(model, judged, self.reference, self.examples, self.is_thing)
        else:
            # Scored as painted: known background (and what the model held for sure on the other open
            # images) counts against the new classes, unknown pixels count for nothing.
            # Before the delta is chosen: it merges as predicted.
            if config.learner == "adaptive":
                model.groups[-1].min_area = self.min_area
            if model.groups[-1].lays_over_previous:
                model.groups[-1].rule = self.rule
            background = model.num_classes + 1
            items = [labelled(e, class_ids, self.is_thing, background) for e in self.examples + self.extra]
            refs = self.reference + [self.context_refs[i] for i in self.extra_of]
            deltas, table = select_deltas(model, items, refs, scale=4,  # at the masks' resolution
                                          raws=painted + [other[i] for i in self.extra_of])
            model.set_deltas(deltas)
        results = [model.merge(raw) for raw in raws]  # every image after the step, as a prediction gives it
        n = len(self.examples)
        painted_report = painted_images_report(results[:n], self.reference, self.examples, class_ids)
        others = other_images_report(results[n:], self.context_refs, class_ids) if self.context else None
        stage = getattr(model.groups[-1].head, "pixel_stage", None) if self.dense else None
        share = [] if stage is None else [float(w) if stage.forest.fitted else 0.0 for w in stage.blend.tolist()]
        predictions = {image_digest(image): r for image, r in zip(self.frozen.images, results)}
        return LearnResult(RunState.DONE, class_ids[0], None if self.dense else model.deltas[-1], result.seconds,
                           result.losses, painted_report, table, others, class_ids, forest_share=share,
                           predictions=predictions, learner=config.learner)

    def _fixed_shares(self) -> tuple[float | None, ...]:
        """Per class, the pixel forest's share set in advance (None: chosen on the painting): stuff
        classes' where the base model recognises little of the painted images (LearnConfig)."""
        config = self.config
        recognised = np.mean([float((ref.semantic > 0).float().mean()) for ref in self.reference])
        fixed = config.dense_stuff_share if recognised <= config.dense_stuff_share_below else None
        return tuple(None if thing else fixed for thing in self.is_thing)

    def _pixel_entries(self, model, data: ExampleSet, class_ids: list[int]) -> list:
        """(DenseInputs, labels) of every painted image and every context image kept as negatives, as
        painted (not augmented): what the pixel stage is fitted on."""
        frozen = list(range(len(self.examples))) + [len(self.examples) + i for i in self.extra_of]
        entries = []
        for k, index in enumerate(frozen):
            encoded = self.frozen.encode(model, index)
            inputs = encoded.dense
            labels, _ = dense_targets(data.targets[k], class_ids, tuple(inputs.image.shape[-2:]))
            entries.append((inputs, labels))
        return entries


def _with_dense_logits(raw: RawPrediction, logits: torch.Tensor) -> RawPrediction:
    """`raw` with the newest dense step's logits replaced."""
    return replace(raw, dense_logits=[*raw.dense_logits[:-1], logits.to(raw.dense_logits[-1])])


def _spread(items: Sequence, count: int) -> list:
    """At most `count` of `items`, evenly spread over them (in order)."""
    items = list(items)
    if len(items) <= count:
        return items
    return [items[round(k * (len(items) - 1) / max(count - 1, 1))] for k in range(count)] if count else []


def other_images_report(after_step, before, class_ids) -> OtherImages:
    """On images that were not painted (`after_step`: their results after the step, `before`: before
    it): of the pixels an old class held, the share that still holds the same class (a pixel the new
    classes took counts as changed); and the share of all pixels the new classes took."""
    kept = held = claimed = total = 0
    for result, ref in zip(after_step, before):
        after, was = result.semantic.cpu().numpy(), ref.semantic.cpu().numpy()
        old = was > 0
        kept += int((after[old] == was[old]).sum())
        held += int(old.sum())
        claimed += int(np.isin(after, list(class_ids)).sum())
        total += after.size
    return OtherImages(len(after_step), kept / held if held else 1.0, claimed / max(total, 1))


def painted_images_report(after_step, reference, examples: Sequence[Example], class_ids) -> PaintedImages:
    """On the painted images (`after_step`: their results after the step, `reference` before it), outside
    the painted instances: the share of pixels whose label held, and the share the new classes took."""
    kept = claimed = total = 0
    for result, before, example in zip(after_step, reference, examples):
        after, was = result.semantic.cpu().numpy(), before.semantic.cpu().numpy()
        outside = np.asarray(example.instances) == 0
        kept += int((after[outside] == was[outside]).sum())
        claimed += int(np.isin(after[outside], list(class_ids)).sum())
        total += int(outside.sum())
    return PaintedImages(len(after_step), kept / total if total else 1.0, claimed / total if total else 0.0)
