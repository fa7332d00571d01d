"""Interactive inspection of a confusion matrix in JupyterLab (ipywidgets).

:class:`ConfusionInspector` draws the matrix as a grid of plain buttons coloured by value;
clicking cell (true i, predicted j) lists the clips in it with a strip of frames, their true and
predicted class and every model's probability for both classes. Frames are decoded only for the
clips on the page being shown and cached, so switching pages, cells or gamma stays quick.
With more than ``GRID_MAX`` (20) classes the grid shows 20 at a time, the most confused first,
and a ``classes`` list picks others: every cell is a widget, and Jupyter drops messages past
1,000 a second, so a 50x50 grid of buttons would never arrive in the browser.

Example (in a notebook)::

    run = kit.confusion.load_run(params, split="val")
    inspector = ConfusionInspector(run.sources, class_names=run.class_names, data_root=run.data_root)
    inspector            # displays the app
    inspector.cell_button(4, 9).click()   # what a click does, also from code
    inspector.clip_rows  # what is shown
"""

from __future__ import annotations

import html
import io
import logging
from collections import OrderedDict
from pathlib import Path

import numpy as np

from kit import confusion
from kit.layout import ENSEMBLE
from kit.predictions import Predictions
from kit.transforms import apply_gamma
from kit.video import VideoReadError, num_frames, read_frames

log = logging.getLogger(__name__)

# a Dropdown shows no selection for the value None, so counts get a name of their own
NORMALIZE_OPTIONS = [("counts", "counts"), ("rows (recall)", "true"), ("columns (precision)", "pred")]
CELL_CLASS = "nk-cell"  # CSS classes let a browser test find the parts
CLIP_CLASS = "nk-clip"
THUMB_CLASS = "nk-thumb"
GRID_MAX = 20  # classes on the grid at once (a 50-class grid would be 2,500 widgets); pick them with `classes`
DEFAULT_GAMMA = 0.25  # the paper's gamma for dark clips
COLOR_LEVELS = 16  # cell colours are quantised so that cells can share their style models
SELECTED_COLOR = "#fd8d3c"  # the clicked cell


class FrameStrips:
    """Small strips of evenly spaced frames per clip, decoded on first use and cached.

    Decoded frames are cached per path (downscaled), encoded PNGs per ``(path, gamma)``.
    """

    def __init__(self, *, frames: int = 4, height: int = 56, max_items: int = 512):
        self.frames = frames
        self.height = height
        self.max_items = max_items
        self._raw: OrderedDict[str, np.ndarray] = OrderedDict()
        self._png: OrderedDict[tuple[str, float | None], bytes] = OrderedDict()
        self.decoded = 0  # how many clips were actually decoded (tests check the cache)

    def _frames(self, path: str) -> np.ndarray:
        if path in self._raw:
            self._raw.move_to_end(path)
            return self._raw[path]
        from PIL import Image

        n = num_frames(path)
        idx = np.unique(np.linspace(0, n - 1, self.frames).round().astype(np.int64))
        video = read_frames(path, idx)  # (T, H, W, 3)
        t, h, w, _ = video.shape
        width = max(1, round(w * self.height / h))
        small = np.stack([np.asarray(Image.fromarray(f).resize((width, self.height), Image.BILINEAR)) for f in video])
        self.decoded += 1
        self._raw[path] = small
        if len(self._raw) > self.max_items:
            self._raw.popitem(last=False)
        return small

    def png(self, path, *, gamma: float | None) -> bytes:
        """PNG of the strip of ``path`` (frames side by side), gamma-corrected when ``gamma`` is set."""
        from PIL import Image

        key = (str(path), gamma)
        if key in self._png:
            self._png.move_to_end(key)
            return self._png[key]
        small = self._frames(str(path))
        if gamma is not None:
            small = apply_gamma(small, gamma)
        gap = np.zeros((small.shape[1], 2, 3), dtype=np.uint8)  # a dark line between frames
        strip = np.concatenate([p for f in small for p in (f, gap)][:-1], axis=1)
        buf = io.BytesIO()
        Image.fromarray(strip).save(buf, format="PNG")
        self._png[key] = buf.getvalue()
        if len(self._png) > self.max_items:
            self._png.popitem(last=False)
        return self._png[key]


def frames_table(table, *, data_root, gamma: float | None = 0.25, strips: FrameStrips | None = None,
                 float_format: str = "{:.3f}"):
    """``table`` (a DataFrame with a ``path`` column, relative to ``data_root``) as static HTML with a
    strip of frames per clip inlined, for reports that keep no widgets. Returns an ``IPython.display.HTML``."""
    import base64

    from IPython.display import HTML
    from pandas.api.types import is_numeric_dtype

    if "path" not in table.columns:
        raise KeyError(f"frames_table needs a 'path' column, got {list(table.columns)}")
    strips = strips or FrameStrips()
    cells = []
    for path in table["path"]:
        try:
            png = strips.png(Path(data_root) / path, gamma=gamma)
            cells.append(f"<img src='data:image/png;base64,{base64.b64encode(png).decode()}' alt='{html.escape(path)}'>")
        except VideoReadError as exc:
            log.warning("frames_table: %s", exc)
            cells.append(f"<span style='color:#b00'>{html.escape(exc.reason)}</span>")
    shown = table.copy()
    for col in shown.columns:
        if not is_numeric_dtype(shown[col]):  # text (object or pandas' str dtype) is escaped, numbers formatted
            shown[col] = shown[col].map(lambda v: html.escape(str(v)))
    shown.insert(0, "frames" + (f" (gamma {gamma})" if gamma else ""), cells)
    return HTML(shown.to_html(escape=False, index=False, float_format=float_format.format, border=0))


class ConfusionInspector:
    """Clickable confusion matrix of several prediction sources, with the clips behind each cell.

    ``sources`` maps ``(model, stage)`` to :class:`Predictions` of one split (same classes);
    clip paths are relative to ``data_root``. ``gamma`` brightens the frame strips (a toggle; ``None``
    starts with the raw frames and toggles to 0.25).
    Programmatic use: :meth:`cell_button` ``(i, j).click()``, :attr:`selected_clips`,
    :attr:`clip_rows`, :meth:`set_gamma`, :meth:`set_normalize`, :meth:`select_source`,
    :meth:`set_classes`, :meth:`next_page` / :meth:`prev_page`. In the browser, cells carry the
    CSS classes ``nk-cell`` and ``nk-cell-<row>-<column>`` (grid positions), listed clips ``nk-clip``,
    their frame strips ``nk-thumb``, the gamma toggle ``nk-gamma``.
    """

    def __init__(self, sources: dict[tuple[str, str], Predictions], *, class_names, data_root,
                 gamma: float | None = 0.25, page_size: int = 6, frames: int = 4, thumb_height: int = 64):
        import ipywidgets as W

        if not sources:
            raise ValueError("ConfusionInspector needs at least one (model, stage) -> Predictions source")
        self.sources = dict(sources)
        self.class_names = list(class_names)
        self.k = len(self.class_names)
        for key, preds in self.sources.items():
            if preds.num_classes != self.k:
                raise ValueError(f"source {key} has {preds.num_classes} classes, class_names has {self.k}")
        if page_size < 1:
            raise ValueError(f"page_size must be >= 1, got {page_size}")
        self.data_root = Path(data_root)
        self.gamma = DEFAULT_GAMMA if gamma is None else gamma  # None: strips start raw, the toggle brightens
        self.page_size = page_size
        self.strips = FrameStrips(frames=frames, height=thumb_height)
        self.models = list(dict.fromkeys(m for m, _ in self.sources))
        self._row_of: dict[tuple[str, str], dict[str, int]] = {}
        self._probs: dict[tuple[str, str], np.ndarray] = {}
        self.selected: tuple[int, int] | None = None
        self.page = 0
        self.clip_rows: list[dict] = []

        # ---- controls
        first_model = next((m for m in self.models if m == ENSEMBLE), self.models[0])
        self.model_dropdown = W.Dropdown(options=self.models, value=first_model, description="model")
        self.stage_dropdown = W.Dropdown(options=self._stages(first_model), description="stage")
        self.stage_dropdown.value = self._stages(first_model)[-1]
        self.normalize_dropdown = W.Dropdown(options=NORMALIZE_OPTIONS, value="counts", description="values")
        self.gamma_toggle = W.ToggleButton(value=gamma is not None, description=f"gamma {self.gamma}", icon="sun",
                                           tooltip="brighten the (nearly black) frames with gamma correction")
        self.gamma_toggle.add_class("nk-gamma")
        self.status = W.HTML()

        # ---- the matrix: a header row, then one row of buttons per true class (at most GRID_MAX)
        m = self._grid_size = min(self.k, GRID_MAX)
        side = self._side = 52 if m <= 12 else 42
        # one Layout and a few ButtonStyles shared by all cells, and cells born painted: each widget
        # model and each change is a message, and Jupyter drops messages past 1,000 a second
        cell_layout = W.Layout(width=f"{side}px", height=f"{side}px", padding="0", margin="0")
        label_layout = W.Layout(align_self="center")
        self._styles: dict = {}
        self._cm = confusion.confusion_of(self._preds)
        self.shown_classes: list[int] = self._default_focus(m)
        self._col_labels = [W.HTML(layout=label_layout) for _ in range(m)]
        self._row_labels = [W.HTML(layout=label_layout) for _ in range(m)]
        states = self._cell_states()
        self._buttons: list[list] = []
        cells = [W.HTML("<b>true \\ pred</b>"), *self._col_labels]
        for r in range(m):
            row = []
            for c in range(m):
                b = W.Button(layout=cell_layout, **states[r][c])
                b.add_class(CELL_CLASS)
                b.add_class(f"{CELL_CLASS}-{r}-{c}")  # grid position (= class ids when all classes fit)
                b.on_click(self._on_cell(r, c))
                row.append(b)
            cells += [self._row_labels[r], *row]
            self._buttons.append(row)
        self._label_axes()
        self.classes_select = W.SelectMultiple(
            options=[(f"{i} {n}", i) for i, n in enumerate(self.class_names)], value=tuple(self.shown_classes),
            rows=8, description="classes", tooltip=f"classes on the grid (at most {GRID_MAX})")
        self.classes_select.observe(self._on_classes, names="value")
        self.grid = W.GridBox(cells, layout=W.Layout(
            grid_template_columns=f"max-content repeat({m}, {side}px)", grid_gap="1px", width="max-content"))

        # ---- the clip list and its pager
        self.prev_button = W.Button(description="◀ prev", layout=W.Layout(width="80px"))
        self.next_button = W.Button(description="next ▶", layout=W.Layout(width="80px"))
        self.page_label = W.Label()
        self.prev_button.on_click(lambda _: self.prev_page())
        self.next_button.on_click(lambda _: self.next_page())
        self.clip_title = W.HTML("<i>click a cell to list its clips</i>")
        self.clip_box = W.VBox()
        self.widget = W.VBox([
            W.HBox([self.model_dropdown, self.stage_dropdown, self.normalize_dropdown, self.gamma_toggle]),
            *([self.classes_select] if self.k > GRID_MAX else []),
            self.status,
            self.grid,
            self.clip_title,
            W.HBox([self.prev_button, self.page_label, self.next_button]),
            self.clip_box,
        ])
        self.model_dropdown.observe(self._on_model, names="value")
        self._quiet = False
        self.stage_dropdown.observe(lambda _: None if self._quiet else self._refresh(), names="value")
        self.normalize_dropdown.observe(lambda _: self._paint(), names="value")
        self.gamma_toggle.observe(lambda _: self._update_thumbnails(), names="value")
        self._refresh()

    # ------------------------------------------------------------ public API

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

    @property
    def source(self) -> tuple[str, str]:
        """The ``(model, stage)`` whose matrix is shown."""
        return self.model_dropdown.value, self.stage_dropdown.value

    @property
    def matrix(self) -> np.ndarray:
        """Counts ``(K, K)`` of the shown source."""
        return self._cm

    @property
    def shown_values(self) -> np.ndarray:
        """``(K, K)`` values the cells show and are coloured by (counts or normalised)."""
        return confusion.normalize(self._cm, self._normalize_by)

    @property
    def _normalize_by(self) -> str | None:
        how = self.normalize_dropdown.value
        return None if how == "counts" else how

    def cell_button(self, i: int, j: int):
        """The button of cell (true class ``i``, predicted class ``j``); both must be on the grid."""
        if i not in self.shown_classes or j not in self.shown_classes:
            raise KeyError(f"class {i if i not in self.shown_classes else j} is not on the grid "
                           f"(shown: {self.shown_classes}); set_classes([...]) first")
        return self._buttons[self.shown_classes.index(i)][self.shown_classes.index(j)]

    def set_classes(self, classes) -> None:
        """Show these classes (ids or names, at most ``GRID_MAX``) on the grid, in id order."""
        ids = []
        for c in classes:
            if isinstance(c, str):
                if c not in self.class_names:
                    raise KeyError(f"no class {c!r}; classes are {self.class_names}")
                c = self.class_names.index(c)
            if not 0 <= int(c) < self.k:
                raise IndexError(f"class id {c} outside 0..{self.k - 1}")
            ids.append(int(c))
        ids = sorted(set(ids))
        if not ids or len(ids) > self._grid_size:
            raise ValueError(f"choose 1 to {self._grid_size} classes for the grid, got {len(ids)}")
        self.shown_classes = ids
        if tuple(ids) != tuple(self.classes_select.value):
            self.classes_select.value = tuple(ids)
        self._label_axes()
        self._paint()

    def select(self, i: int, j: int) -> None:
        """Show the clips of cell (true ``i``, predicted ``j``), first page."""
        if not (0 <= i < self.k and 0 <= j < self.k):
            raise IndexError(f"cell ({i}, {j}) outside a {self.k}x{self.k} matrix")
        self.selected = (i, j)
        self.page = 0
        self._paint()
        self._show_page()

    def select_source(self, model: str, stage: str) -> None:
        """Show the matrix of ``(model, stage)``."""
        if (model, stage) not in self.sources:
            raise KeyError(f"no predictions for {model}@{stage}; have {sorted(self.sources)}")
        self.model_dropdown.value = model
        self.stage_dropdown.value = stage

    def set_normalize(self, how: str | None) -> None:
        """Cell values: ``None`` counts, ``"true"`` row-normalised, ``"pred"`` column-normalised."""
        if how not in confusion.NORMALIZE:
            raise ValueError(f"normalize must be one of {confusion.NORMALIZE}, got {how!r}")
        self.normalize_dropdown.value = "counts" if how is None else how

    def set_gamma(self, on: bool) -> None:
        """Gamma-correct the frame strips (on) or show the raw dark frames (off)."""
        self.gamma_toggle.value = bool(on)

    @property
    def selected_clips(self) -> list[str]:
        """Paths of all clips in the selected cell (every page), most confident first."""
        if self.selected is None:
            return []
        return [self._preds.paths[r] for r in self._cell_rows()]

    @property
    def num_pages(self) -> int:
        return max(1, -(-len(self.selected_clips) // self.page_size))

    def next_page(self) -> None:
        if self.page + 1 < self.num_pages:
            self.page += 1
            self._show_page()

    def prev_page(self) -> None:
        if self.page > 0:
            self.page -= 1
            self._show_page()

    # ------------------------------------------------------------ internals

    @property
    def _preds(self) -> Predictions:
        return self.sources[self.source]

    def _stages(self, model: str) -> list[str]:
        return [s for m, s in self.sources if m == model]

    def _on_cell(self, r: int, c: int):
        # a button stands for a grid position; which classes sit there depends on the focus
        def click(_button):
            if r < len(self.shown_classes) and c < len(self.shown_classes):
                self.select(self.shown_classes[r], self.shown_classes[c])
        return click

    def _on_classes(self, change) -> None:
        chosen = list(change["new"])
        if 0 < len(chosen) <= self._grid_size:
            self.set_classes(chosen)
        else:
            self.status.value = f"<span style='color:#b00'>choose 1 to {self._grid_size} classes for the grid</span>"

    def _default_focus(self, m: int) -> list[int]:
        """All classes if they fit; else the classes of the most-confused pairs, topped up by id."""
        if self.k <= m:
            return list(range(self.k))
        chosen: list[int] = []
        for pair in confusion.most_confused(self._cm, top=self.k * self.k).itertuples():
            for c in (pair.true_id, pair.pred_id):
                if c not in chosen and len(chosen) < m:
                    chosen.append(int(c))
        chosen += [c for c in range(self.k) if c not in chosen][: m - len(chosen)]
        return sorted(chosen)

    def _label_axes(self) -> None:
        small = self._grid_size > 12
        for r, (row_label, col_label) in enumerate(zip(self._row_labels, self._col_labels, strict=True)):
            name = self.class_names[self.shown_classes[r]] if r < len(self.shown_classes) else ""
            text = html.escape(f"{self.shown_classes[r]} {name}" if name and self.k > GRID_MAX else name)
            row_label.value = f"<div style='font-size:{10 if small else 12}px;white-space:nowrap'>{text}</div>"
            head = str(self.shown_classes[r]) if name and self.k > GRID_MAX else name  # ids match the row labels
            col_label.value = (f"<div style='text-align:center;font-size:{9 if small else 11}px;overflow:hidden;"
                               f"white-space:nowrap;text-overflow:ellipsis;width:{self._side}px' "
                               f"title='{html.escape(name)}'>{html.escape(head)}</div>")

    def _on_model(self, change) -> None:
        stages = self._stages(change["new"])
        keep = self.stage_dropdown.value if self.stage_dropdown.value in stages else stages[-1]
        self._quiet = True  # new options reset the value: refresh once, at the end
        try:
            self.stage_dropdown.options = stages
            self.stage_dropdown.value = keep
        finally:
            self._quiet = False
        self._refresh()

    def _refresh(self) -> None:
        preds = self._preds
        self._cm = confusion.confusion_of(preds)
        n_unl = confusion.unlabelled_count(preds.labels)
        model, stage = self.source
        self.status.value = (f"<b>{html.escape(model)}@{html.escape(stage)}</b>: {int(self._cm.sum())} labelled clips, "
                             f"top-1 {confusion.top1(self._cm):.1%}"
                             + (f"; {n_unl} unlabelled clip(s) left out" if n_unl else "")
                             + (f"; the grid shows {len(self.shown_classes)} of {self.k} classes, picked under "
                                f"'classes' (first the most confused)" if self.k > GRID_MAX else ""))
        self.page = 0
        self._paint()
        self._show_page()

    def _style(self, level: int, diagonal: bool, selected: bool):
        """The shared ButtonStyle of a cell: colour level 0..COLOR_LEVELS, bold on the diagonal."""
        import ipywidgets as W
        from matplotlib import colormaps
        from matplotlib.colors import to_hex

        key = ("selected", diagonal) if selected else (level, diagonal)
        if key not in self._styles:
            colour = SELECTED_COLOR if selected else to_hex(colormaps["Blues"](0.05 + 0.9 * level / COLOR_LEVELS))
            self._styles[key] = W.ButtonStyle(
                button_color=colour, text_color="white" if level > COLOR_LEVELS / 2 and not selected else "black",
                font_weight="bold" if diagonal else "normal")
        return self._styles[key]

    def _cell_states(self) -> list[list[dict]]:
        """Per grid position: the button's description, tooltip, shared style and whether it is in use."""
        how = self._normalize_by
        values = self.shown_values
        shown = self.shown_classes
        top = values[np.ix_(shown, shown)].max() if how is None else 1.0
        m = self._grid_size
        states = []
        for r in range(m):
            row = []
            for c in range(m):
                if r >= len(shown) or c >= len(shown):  # fewer classes chosen than the grid holds
                    row.append({"description": "", "tooltip": "", "disabled": True,
                                "style": self._style(0, False, False)})
                    continue
                i, j = shown[r], shown[c]
                v = values[i, j]
                level = round(COLOR_LEVELS * v / top) if top > 0 else 0
                row.append({
                    "description": f"{int(v)}" if how is None else f"{v:.2f}",
                    "tooltip": (f"{self.class_names[i]} -> {self.class_names[j]}: {int(self._cm[i, j])} clip(s)"
                                + ("" if how is None else f", {v:.2f}")),
                    "disabled": False,
                    "style": self._style(level, i == j, self.selected == (i, j)),
                })
            states.append(row)
        return states

    def _paint(self) -> None:
        # traitlets send only what changed, so a repaint costs one message per changed cell
        for row, states in zip(self._buttons, self._cell_states(), strict=True):
            for b, state in zip(row, states, strict=True):
                for name, value in state.items():
                    setattr(b, name, value)

    def _cell_rows(self) -> np.ndarray:
        i, j = self.selected
        rows = confusion.cell_indices(self._preds, i, j)
        conf = self._probs_of(self.source)[rows, j]
        return rows[np.argsort(-conf, kind="stable")]

    def _prob_sources(self) -> list[tuple[str, str]]:
        # every model at the shown stage where it has one, else at its last stage
        stage = self.source[1]
        out = []
        for m in self.models:
            stages = self._stages(m)
            out.append((m, stage if stage in stages else stages[-1]))
        return out

    def _probs_of(self, key) -> np.ndarray:
        # softmax once per source, not once per shown clip
        if key not in self._probs:
            self._probs[key] = self.sources[key].probs()
        return self._probs[key]

    def _row_index(self, key) -> dict[str, int]:
        if key not in self._row_of:
            self._row_of[key] = {p: r for r, p in enumerate(self.sources[key].paths)}
        return self._row_of[key]

    def _update_thumbnails(self) -> None:
        # gamma only changes the pictures: swap their PNGs in place, the rows stay where they are
        gamma = self.gamma if self.gamma_toggle.value else None
        for row, box in zip(self.clip_rows, self.clip_box.children, strict=True):
            if row["thumbnail"]:
                box.children[0].value = self.strips.png(self.data_root / row["path"], gamma=gamma)

    def _show_page(self) -> None:
        import ipywidgets as W

        if self.selected is None:
            self.clip_rows = []
            self.page_label.value = ""
            return
        i, j = self.selected
        rows = self._cell_rows()
        start = self.page * self.page_size
        page_rows = rows[start:start + self.page_size]
        gamma = self.gamma if self.gamma_toggle.value else None
        name_i, name_j = self.class_names[i], self.class_names[j]
        self.clip_title.value = (f"<b>true {html.escape(name_i)} → predicted {html.escape(name_j)}</b> "
                                 f"({html.escape('@'.join(self.source))}): {len(rows)} clip(s)")
        self.page_label.value = f"page {self.page + 1} of {self.num_pages}" if len(rows) else "no clips"
        self.prev_button.disabled = self.page == 0
        self.next_button.disabled = self.page + 1 >= self.num_pages
        shown, boxes = [], []
        for r in page_rows:
            path = self._preds.paths[r]
            probs = {}
            for key in self._prob_sources():
                other = self.sources[key].paths
                # lists made from the same CSV line up row for row; otherwise find the clip by path
                row = r if r < len(other) and other[r] == path else self._row_index(key).get(path)
                if row is not None:
                    p = self._probs_of(key)[row]
                    probs["@".join(key)] = (float(p[i]), float(p[j]))
            thumb, error = None, None
            try:
                thumb = self.strips.png(self.data_root / path, gamma=gamma)
            except VideoReadError as exc:
                error = str(exc)
                log.warning("inspector: %s", exc)
            shown.append({"path": path, "true": name_i, "predicted": name_j, "probs": probs,
                          "thumbnail": thumb is not None, "error": error})
            boxes.append(self._clip_box(path, name_i, name_j, probs, thumb, error, W))
        self.clip_rows = shown
        self.clip_box.children = boxes

    @staticmethod
    def _clip_box(path, name_i, name_j, probs, thumb, error, W):
        table = "".join(
            f"<tr><td>{html.escape(src)}</td><td style='text-align:right'>{pt:.3f}</td>"
            f"<td style='text-align:right'>{pp:.3f}</td></tr>" for src, (pt, pp) in probs.items()
        )
        info = W.HTML(
            f"<div style='font-size:12px'><code>{html.escape(path)}</code><br>"
            f"true <b>{html.escape(name_i)}</b>, predicted <b>{html.escape(name_j)}</b>"
            f"<table style='font-size:11px'><tr><th>model@stage</th><th>p({html.escape(name_i)})</th>"
            f"<th>p({html.escape(name_j)})</th></tr>{table}</table></div>"
        )
        if thumb is not None:
            picture = W.Image(value=thumb, format="png")
            picture.add_class(THUMB_CLASS)
        else:
            picture = W.HTML(f"<span style='color:#b00'>{html.escape(error or 'no frames')}</span>")
        box = W.HBox([picture, info], layout=W.Layout(align_items="center", grid_gap="12px",
                                                       border_bottom="1px solid #ddd"))
        box.add_class(CLIP_CLASS)
        return box
