"""The Box prompts dock widget: draw a rectangle, get phases (or one corrected object) inside it only.

Draw rectangles on the micrograph's ``<image> boxes`` Shapes layer (:mod:`.roles`). Each new rectangle runs the model
with the box as prompt (the :class:`~napari_metalseg.predict.Predictor` box path: decoded from the micrograph's cached
tile embeddings, no encoder work once it was predicted; ratio guidance applies) and writes into the micrograph's
``<image> phases`` layer **only inside the box**, as **one undo step** (``Ctrl+Z`` on the phases layer restores the box
exactly). What a box changed counts as the user's correction (:mod:`.edits`): a later prediction or ratio change keeps
it. Two modes:

``predict phases in box``
    every pixel of the box gets the predicted phase.
``assign selected phase to object``
    one object inside the box gets the phase chosen in the widget; nothing else changes. The object is found in
    the predicted phase map of the box by the rule of :func:`napari_metalseg.prompts.object_in_box` (the matrix
    phase is the most frequent one on the box outline; the object is the other-phase region covering the box
    centre, else the largest, holes filled).
"""

from __future__ import annotations

from collections import deque
from functools import partial

import numpy as np
from napari.layers import Image, Labels, Shapes
from qtpy.QtCore import QTimer
from qtpy.QtGui import QColor, QIcon, QPixmap
from qtpy.QtWidgets import (
    QButtonGroup,
    QComboBox,
    QFormLayout,
    QLabel,
    QPushButton,
    QRadioButton,
    QVBoxLayout,
)

from napari_metalseg._widgets.base import DockWidget
from napari_metalseg._widgets.calibration import layer_calibration
from napari_metalseg._widgets.edits import show_edits, watch_edits
from napari_metalseg._widgets.layers import image_of_layer, image_transform, phases_of_layer, show_phase_map
from napari_metalseg._widgets.picker import LayerPicker
from napari_metalseg._widgets.predict import effective_ratios
from napari_metalseg._widgets.roles import (
    BOXES,
    PHASES,
    find_layer,
    image_of,
    is_2d_image,
    layer_name,
    role_metadata,
    role_of,
)
from napari_metalseg.errors import MetalsegError
from napari_metalseg.phases import UNLABELED, mask_to_labels
from napari_metalseg.prompts import object_in_box

MODE_PREDICT = "predict phases in box"
MODE_OBJECT = "assign selected phase to object"
MODES = (MODE_PREDICT, MODE_OBJECT)


def box_from_vertices(
    vertices: np.ndarray, shapes_layer: Shapes, image_layer: Image, shape: tuple[int, int]
) -> tuple[int, int, int, int]:
    """A rectangle of ``shapes_layer`` (its data coordinates) -> ``x0, y0, x1, y1`` pixel edges of the image.

    Pixel ``i`` covers ``[i - 0.5, i + 0.5]`` in napari data coordinates; the box keeps the pixels whose centres
    the rectangle covers, clipped to the image.
    """
    vertices = np.asarray(vertices, float)[:, -2:]
    corners = np.array([image_layer.world_to_data(shapes_layer.data_to_world(v))[-2:] for v in vertices])
    y_lo, x_lo = corners.min(0)
    y_hi, x_hi = corners.max(0)
    h, w = shape
    y0, x0 = max(0, int(np.ceil(y_lo - 0.5))), max(0, int(np.ceil(x_lo - 0.5)))
    y1, x1 = min(h, int(np.floor(y_hi + 0.5))), min(w, int(np.floor(x_hi + 0.5)))
    if y1 - y0 < 2 or x1 - x0 < 2:
        raise MetalsegError("the box is outside the micrograph or smaller than 2 x 2 pixels; draw it over the image")
    return x0, y0, x1, y1


def remove_shape(layer: Shapes, vertices: np.ndarray) -> bool:
    """Remove the last shape of ``layer`` with these vertices (a refused box); False when there is none."""
    vertices = np.asarray(vertices, float)
    for index in range(len(layer.data) - 1, -1, -1):
        data = np.asarray(layer.data[index], float)
        if data.shape == vertices.shape and np.allclose(data, vertices):
            layer.remove([index])
            return True
    return False


class BoxPromptWidget(DockWidget):
    """Dock widget: box prompts that predict phases, or correct one object, inside the box only.

    Parameters
    ----------
    napari_viewer : napari.Viewer
    """

    def __init__(self, napari_viewer) -> None:
        super().__init__(napari_viewer)
        self.last_box: tuple[int, int, int, int] | None = None
        self.last_change: np.ndarray | None = None
        self._queue: deque = deque()
        self._shapes_connected: set[int] = set()

        self.image = LayerPicker(napari_viewer, Image, accept=is_2d_image)
        self.mode_group = QButtonGroup(self)
        self.mode_buttons = {}
        for i, mode in enumerate(MODES):
            button = QRadioButton(mode)
            self.mode_group.addButton(button, i)
            self.mode_buttons[mode] = button
        self.mode_buttons[MODE_PREDICT].setChecked(True)
        self.phase = QComboBox()
        self.draw_button = QPushButton("Draw boxes")
        self.draw_button.setToolTip("Select the micrograph's '<image> boxes' shapes layer in rectangle mode")
        self.clear_button = QPushButton("Clear boxes")
        self.status = QLabel("Draw a rectangle over the micrograph.")
        self.status.setWordWrap(True)

        form = QFormLayout()
        form.addRow("Micrograph", self.image)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        for button in self.mode_buttons.values():
            layout.addWidget(button)
        phase_form = QFormLayout()
        phase_form.addRow("Phase", self.phase)
        layout.addLayout(phase_form)
        layout.addWidget(self.draw_button)
        layout.addWidget(self.clear_button)
        layout.addWidget(self.status)
        layout.addStretch(1)

        self.draw_button.clicked.connect(self.activate)
        self.clear_button.clicked.connect(self.clear_boxes)
        self.mode_group.idToggled.connect(lambda *_: self._update())
        self.session.model_changed.connect(self._update)
        napari_viewer.layers.events.inserted.connect(self._on_layer_inserted)
        for layer in napari_viewer.layers:
            self._watch(layer)
        self._update()

    # -- state -------------------------------------------------------------------------------------------------
    @property
    def mode(self) -> str:
        return MODES[self.mode_group.checkedId()]

    def set_mode(self, mode: str, phase: str | None = None) -> None:
        """Choose the mode (and, for the object mode, the phase to assign)."""
        self.mode_buttons[mode].setChecked(True)
        if phase is not None:
            self.phase.setCurrentText(phase)

    def _update(self) -> None:
        phases = self.session.phases
        current = self.phase.currentText()
        self.phase.clear()
        if phases is not None:
            for phase in phases.phases:
                pixmap = QPixmap(12, 12)
                pixmap.fill(QColor(phase.color))
                self.phase.addItem(QIcon(pixmap), phase.name)
            if current in phases.names:
                self.phase.setCurrentText(current)
        self.phase.setEnabled(self.mode == MODE_OBJECT)

    def _on_layer_inserted(self, event) -> None:
        self._watch(event.value)

    def _watch(self, layer) -> None:
        key = id(getattr(layer, "__wrapped__", layer))  # plugin widgets see proxies of the layers
        if isinstance(layer, Shapes) and role_of(layer) == BOXES and key not in self._shapes_connected:
            self._shapes_connected.add(key)
            layer.events.data.connect(partial(self._on_shapes_data, layer))

    # -- boxes -------------------------------------------------------------------------------------------------
    def shapes_layer(self, create: bool = True) -> Shapes | None:
        """The chosen micrograph's ``<image> boxes`` layer (created over it when missing)."""
        image = self.image.layer()
        if image is None:
            if create:
                raise MetalsegError("no micrograph: open an image first")
            return None
        layer = find_layer(self.viewer, image, BOXES)
        if layer is not None or not create:
            return layer
        width = max(1.0, max(image.data.shape[:2]) / 250)
        layer = self.viewer.add_shapes(
            ndim=2,
            name=layer_name(image.name, BOXES),
            metadata=role_metadata(image.name, BOXES),
            shape_type="rectangle",
            edge_color="#ffd700",
            face_color="transparent",
            edge_width=width,
            **image_transform(image),
        )
        self._watch(layer)
        return layer

    def activate(self) -> Shapes:
        """Select the box layer in rectangle-drawing mode."""
        layer = self.shapes_layer()
        self.viewer.layers.selection.active = layer
        layer.mode = "add_rectangle"
        return layer

    def clear_boxes(self) -> None:
        layer = self.shapes_layer(create=False)
        if layer is not None and len(layer.data):
            layer.selected_data = set(range(len(layer.data)))
            layer.remove_selected()

    def _on_shapes_data(self, layer: Shapes, event) -> None:
        if getattr(event, "action", None) != "added" or tuple(getattr(event, "data_indices", ())) != (-1,):
            return
        if not len(layer.data) or layer.shape_type[-1] != "rectangle":
            return
        self.submit(np.asarray(layer.data[-1]), layer)

    def submit(self, vertices: np.ndarray, shapes_layer: Shapes | None = None):
        """Process one rectangle (its vertices in ``shapes_layer`` data coordinates); queued while busy."""
        self._queue.append((np.asarray(vertices), shapes_layer or self.shapes_layer()))
        if not self.busy:
            return self._next()
        return self.worker

    def _next(self):
        while self._queue and not self.busy:
            vertices, shapes_layer = self._queue.popleft()
            try:
                self._start(vertices, shapes_layer)
            except MetalsegError as exc:
                self._refuse(vertices, shapes_layer, exc)
        return self.worker

    def _refuse(self, vertices: np.ndarray, shapes_layer: Shapes, exc: MetalsegError) -> None:
        """A box that cannot be used: one error line, its rectangle removed, the last box's result text cleared."""
        self.status.setText("")
        self._failed(exc)
        # later: the rectangle is being added (this runs in the layer's data event)
        QTimer.singleShot(0, partial(remove_shape, shapes_layer, vertices))

    def _target_layer(self, image_layer: Image, shape: tuple[int, int]) -> Labels:
        """The micrograph's ``<image> phases`` layer (created empty when it was not predicted yet)."""
        phases = self.session.phases
        target = find_layer(self.viewer, image_layer, PHASES)
        if target is None:
            target = show_phase_map(
                self.viewer,
                np.full(shape, UNLABELED, np.uint8),
                phases,
                layer_name(image_layer.name, PHASES),
                **image_transform(image_layer),
                metadata=role_metadata(image_layer.name, PHASES),
            )
            watch_edits(self.viewer, target)
        if target.multiscale:
            raise MetalsegError(
                f"labels layer {target.name!r} is the read-only multiscale layer of a micrograph predicted as a stream "
                "of tiles: box prompts write into single-scale layers; crop the region into a micrograph of its own"
            )
        if tuple(target.data.shape) != tuple(shape):
            raise MetalsegError(
                f"labels layer {target.name!r} has shape {tuple(target.data.shape)} but the "
                f"micrograph {image_layer.name!r} has {tuple(shape)}; choose matching layers"
            )
        own = phases_of_layer(target)
        if own is not None and own.names != phases.names:
            raise MetalsegError(
                f"labels layer {target.name!r} has phases {own.names}, the model {phases.names}; choose another layer"
            )
        return target

    def _start(self, vertices: np.ndarray, shapes_layer: Shapes):
        session = self.session
        if session.predictor is None:
            raise MetalsegError("no model yet: open a trained run in the Model widget first")
        image_layer = image_of(self.viewer, shapes_layer) or self.image.layer()
        if image_layer is None:
            raise MetalsegError("no micrograph layer: open an image first")
        image = image_of_layer(image_layer)
        box = box_from_vertices(vertices, shapes_layer, image_layer, image.shape)
        target = self._target_layer(image_layer, image.shape)
        mode = self.mode
        phase = session.phases.index(self.phase.currentText()) if mode == MODE_OBJECT else None
        predictor, ratios = session.predictor, effective_ratios(session, box=True)
        self.last_error = None
        self.status.setText(f"box x {box[0]}..{box[2]}, y {box[1]}..{box[3]}: predicting")

        return self.start_job(
            predictor.predict_job(image, ratios=ratios, box=box, pixel_size_um=layer_calibration(image_layer)[1]),
            "box prompt",
            partial(self.apply, target, box, mode, phase),
            on_finish=self._next,
        )

    def apply(self, target: Labels, box: tuple[int, int, int, int], mode: str, phase: int | None, phase_map) -> int:
        """Write a box prediction into ``target`` inside the box only, as one undo step; returns pixels changed."""
        x0, y0, x1, y1 = box
        region = np.asarray(phase_map.labels[y0:y1, x0:x1])
        if mode == MODE_OBJECT:
            selected = object_in_box(region)
            region = np.full(region.shape, phase, np.uint8)
        else:
            selected = region != UNLABELED
        values = mask_to_labels(region)[selected]
        ys, xs = np.nonzero(selected)
        dtype = np.asarray(target.data).dtype
        before = np.asarray(target.data[y0:y1, x0:x1]).copy()
        with target.block_history():
            target.data_setitem((ys + y0, xs + x0), values.astype(dtype))
        changed = np.asarray(target.data[y0:y1, x0:x1]) != before
        show_edits(self.viewer, target)
        self.last_box = box
        self.last_change = changed
        what = (
            f"object ({int(selected.sum())} px) -> {self.session.phases.names[phase]}"
            if mode == MODE_OBJECT
            else "phases predicted"
        )
        self.status.setText(
            f"box x {x0}..{x1}, y {y0}..{y1}: {what}; {int(changed.sum())} px changed "
            f"(Ctrl+Z on '{target.name}' undoes it; kept through new predictions)"
        )
        return int(changed.sum())
