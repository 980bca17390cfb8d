"""Teach and Learn: annotation layers (instances, background) saved into the project as they are
painted, and Learn in a worker with its progress and report. A part of `EclipseWidget` (see widget.py)."""

from qtpy.QtCore import QTimer
from superqt.utils import ensure_main_thread

from model.interactive.config import Example, LearnConfig  # no torch: the widget appears at once
from model.training.progress import RunState

from . import annotations
from . import layers as L
from .image_input import LayerInputError, planes_of
from .predict_actions import _colormap
from .project import ProjectError
from .state import State


class TeachActions:
    # ================================================================= teach
    def _new_class(self) -> tuple[str, bool]:
        """The class typed: a new one, or one of the newest step's (painted more, to Refine)."""
        name = self.class_name.text().strip()
        if not name:
            raise ValueError("type a name for the new class first")
        if self.session is not None and name in {c.name for c in self.session.classes}:
            model = self.session.model
            if model.num_steps == 0 or name not in {c.name for c in model.groups[-1].classes}:
                raise ValueError(f"the model already knows a class named {name!r}: choose another name (only "
                                 "the newest step's classes can be painted more, to Refine)")
        return name, self.class_kind.currentText() == "thing"

    def add_annotation_layer(self, kind: str = annotations.INSTANCES):
        """A Labels layer over the selected image for painting instances of the new class, or (kind
        BACKGROUND) "not this class"; what the project holds for this class and image is restored."""
        try:
            name, is_thing = self._new_class()
            image = self._image_layer()
            known = name in {c["name"] for c in self.project.categories}  # a known class keeps its colour
            self.project.ensure_category(name, is_thing, None if known else _next_class_color(self.session, self.project))
        except (ValueError, LayerInputError) as exc:
            return self._notify(str(exc), "error")
        layer = self.painting.layer_for(name, image, kind)
        if layer is None or layer not in self.viewer.layers:
            data, kwargs = annotations.new_layer_args(image, name, is_thing, kind)
            if kind == annotations.BACKGROUND:  # one grey label: "not this class"
                kwargs["colormap"] = _colormap({None: L.TRANSPARENT, 0: L.TRANSPARENT, 1: annotations.BACKGROUND_COLOR})
                kwargs["opacity"] = 0.6
            layer = self.viewer.add_labels(data, **kwargs)
            L.place_like(layer, image)
            L.move_above(self.viewer.layers, layer, image)
            restored = self.painting.track(layer, image)
            if restored.refused:
                self._notify(restored.message(name), "warning")
            layer.brush_size = 8 if kind == annotations.INSTANCES else 16
            for event in (layer.events.paint, layer.events.data):
                event.connect(lambda *_, layer=layer: self._annotation_changed(layer))
        if kind == annotations.BACKGROUND:
            layer.selected_label = 1
        layer.mode = "paint"
        self.viewer.layers.selection.active = layer
        self._update_teach_info()
        return layer

    def add_background_layer(self):
        """The background ("not this class") layer of the image being annotated (the image of the
        selected annotation layer; otherwise the chosen image), in paint mode."""
        image = self._annotated_image()
        if image is not None:
            self.image_choice.setCurrentText(image.name)
        return self.add_annotation_layer(annotations.BACKGROUND)

    def _annotated_image(self):
        """The image layer of the selected annotation layer (of the class typed), or None."""
        layer = self.viewer.layers.selection.active
        if layer is None or self.painting is None or layer.metadata.get(L.CLASS_KEY) != self.class_name.text().strip():
            return None
        return self.painting.image_of(layer)

    def _annotation_layer_shown(self):
        """(the instance layer of the class typed on the image being annotated, the plane shown) or None."""
        image = self._annotated_image()
        if image is None:
            return None
        layer = self.painting.layer_for(self.class_name.text().strip(), image, annotations.INSTANCES)
        return None if layer is None else (layer, self._shown_plane(image))

    def _mark_complete(self, checked: bool) -> None:
        """The checkbox: the image being annotated is (not) painted completely; saved with its painting."""
        shown = self._annotation_layer_shown()
        if shown is None:
            self.complete.setChecked(False)
            return self._notify("select the annotation layer of the image you painted (Annotate selected image) "
                                "first: the box applies to that image", "warning")
        self.painting.set_complete(*shown, checked)
        self._save_timer.start()

    def _on_plane_shown(self, *_) -> None:
        self._sync_complete()

    def _sync_complete(self) -> None:
        """The checkbox shows the flag of the annotation selected (unticked for any other layer)."""
        shown = self._annotation_layer_shown()
        self.complete.setChecked(shown is not None and self.painting.is_complete(*shown))

    def _annotation_changed(self, layer) -> None:
        self.painting.changed(layer)
        self._save_timer.start()

    def flush_annotations(self) -> None:
        """Writes changed annotation layers into the project (runs 0.3 s after the last stroke)."""
        if self.painting is None:
            return
        for error in self.painting.flush():
            self._notify(error, "error")
        self._update_teach_info()

    def _update_teach_info(self) -> None:
        name = self.class_name.text().strip()
        if name and self.project is not None:
            self.teach_info.setText(annotations.summary(self.project, name))

    # ================================================================= learn
    def _painted(self, names) -> tuple[list, set]:
        """A NewClass per name, with its annotations from the project and the project's kind and colour;
        and the keys of the images they were painted on."""
        from model.interactive.config import NewClass

        categories = {c["name"]: c for c in self.project.categories}
        out, keys, readings = [], set(), []
        for name in names:
            stored = annotations.examples(self.project, name)
            readings.append(f"{name}: {annotations.reading(stored)}")
            if not any(a.instances.any() for a in stored):
                raise ValueError(f"no annotations of {name!r} yet: click 'Annotate selected image' and paint")
            c = categories[name]
            out.append(NewClass(name, bool(c["isthing"]),
                                [Example(a.image, a.instances, a.background, complete=a.complete) for a in stored],
                                tuple(c["color"])))
            keys |= {a.image_key for a in stored}
        self.painting_reading = "<br>".join(readings)  # said at Learn: how the unpainted pixels are read
        return out, keys

    def _unlearned(self) -> list[str]:
        """Classes painted in the project that the model does not know yet, in the project's order."""
        known = {c.name for c in self.session.classes}
        painted = {a.class_name for a in self.project.annotations() if a.instances.any()}
        return [c["name"] for c in self.project.categories if c["name"] not in known and c["name"] in painted]

    def learn(self) -> None:
        """Learns every class painted since the last step, in one new step."""
        self._train(refine=False)

    def refine(self) -> None:
        """Retrains the newest step on its classes' painting as it is now (more, or corrected)."""
        self._train(refine=True)

    def _train(self, refine: bool) -> None:
        if self.state != State.READY:
            return self._notify(f"cannot learn now: {self.state.value}", "warning")
        self.flush_annotations()
        try:
            if refine:
                if self.session.model.num_steps == 0:
                    raise ValueError("there is no learned step to refine: Learn a class first")
                names = [c.name for c in self.session.model.groups[-1].classes]
            else:
                typed = self.class_name.text().strip()
                if not typed:
                    raise ValueError("type a name for the new class first")
                names = self._unlearned()
                if not names:
                    if typed in {c.name for c in self.session.classes}:
                        raise ValueError(f"{typed!r} is learned already: paint more or correct it, then Refine")
                    raise ValueError(f"no annotations of {typed!r} yet: click 'Annotate selected image' and paint")
            classes, painted = self._painted(names)
            context = self._context_planes(painted)
        except (ValueError, ProjectError) as exc:
            return self._notify(str(exc), "error")
        if refine:  # the step's own learner, with that learner's own iterations
            config = LearnConfig.for_learner(self.session.model.groups[-1].learner)
        else:
            config = LearnConfig.for_learner(self.learner.currentData(), iterations=self.iterations.value())
        self.progress.setRange(0, config.iterations)
        self.progress.setValue(0)
        self.report.setText(self.painting_reading)
        threads = self.threads.value()
        train = self.session.refine if refine else self.session.learn_classes

        def run():
            import torch

            torch.set_num_threads(threads)
            alive = self._alive  # after the window closed, no progress reaches the deleted widgets
            return train(classes, config, callback=lambda p: self._on_progress(p) if alive else None,
                         cancel=self._aborted, save_to=self._model_folder, context=context)

        self._start(run, on_done=self._on_learned, state=State.LEARNING)

    def _context_planes(self, annotated: set, limit: int = 8) -> list:
        """The current planes of other open image layers (at most `limit`): Learn takes what the model
        already knows confidently there as "not the new class"."""
        from napari.layers import Image

        out = []
        for layer in self.viewer.layers:
            if not isinstance(layer, Image) or len(out) >= limit:
                continue
            index = self._shown_plane(layer)
            if annotations.plane_identity(layer.data[index]) in annotated:
                continue
            try:
                out += [plane for _, plane in planes_of(layer.data, layer.rgb, index, layer.contrast_limits)]
            except LayerInputError:
                continue  # a layer the model cannot read is simply not used
        return out

    @ensure_main_thread
    def _on_progress(self, p) -> None:
        if not self._alive:
            return
        self.progress.setValue(p.iteration)
        self.progress_label.setText(f"{p.iteration}/{p.total} iterations · loss {p.loss:.3g} · "
                                    f"{p.seconds:.0f} s, about {p.eta_seconds:.0f} s left")

    def _on_learned(self, result) -> None:
        self.last_learn = result
        if result.state == RunState.CANCELLED:
            self.progress_label.setText("cancelled: the model is exactly as before")
            self._notify("Learning cancelled; the model is unchanged")
        else:
            names = ", ".join(self.session.classes[i - 1].name for i in result.class_ids)
            how = _how(result, [self.session.classes[i - 1].name for i in result.class_ids])
            verb = "Refined" if result.refined else "Learned"
            what = f"{names} (the newest step)" if result.refined else names
            self.report.setText(f"{verb} <b>{what}</b> in {result.seconds:.0f} s ({how}).{_report(result)}"
                                f"<br>{self.painting_reading}")
            self._notify(f"{verb} {names} in {result.seconds:.0f} s")
        self._refresh_model()
        QTimer.singleShot(0, self._repredict)



def _how(result, names: list[str]) -> str:
    """Which kind of step Learn made, and for a dense step what its pixel forest weighs per class."""
    if result.learner == "adaptive":
        return f"an adaptive prompt step (queries start where the image shows the classes), δ = {result.delta:g}"
    if result.delta is not None:
        return f"an ECLIPSE prompt step, δ = {result.delta:g}"
    if not result.forest_share:
        return "a dense step"
    if not any(result.forest_share):
        return "a dense step; its pixel forest did no better than the head on the painting and was dropped"
    shares = ", ".join(f"{name} {share:.0%}" for name, share in zip(names, result.forest_share))
    return f"a dense step; the pixel forest's share: {shares}"


def _report(result) -> str:
    """What the step changed, on the painted images (outside the painting) and, separately, on the other
    open images."""
    lines = []
    new = "the new classes" if len(result.class_ids or []) > 1 else "the new class"
    p = result.painted
    if p is not None:
        lines.append(f"Painted images, outside the painted instances: {100 * p.kept:.1f}% of the pixels kept "
                     f"their label; {new} took {100 * p.claimed:.1f}%.")
    o = result.others
    if o is not None:
        lines.append(f"Other open images ({o.images}, not painted): {100 * o.kept:.1f}% of the pixels an old class "
                     f"held still hold it; {new} took {100 * o.claimed:.1f}% of all pixels.")
    return "".join(f"<br>{line}" for line in lines)


def _next_class_color(session, project):
    """A colour for a new class unlike every class of the model and of the project (the model learns
    the class in the colour the project holds for it)."""
    from model.network.classes import distinct_color

    taken = [c.color for c in session.classes] if session is not None else []
    return distinct_color(taken + [tuple(c["color"]) for c in project.categories])
