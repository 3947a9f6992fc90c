"""The review page: trame + trame-slicer views bound to a ReviewSession (session.py).

The page holds no logic of its own: each button calls one session method, inside `_guard`, so a
malformed request (a wrong argument from the page, a case id not in the dataset, a path leading
out of it) is answered with an error message on the page and the server keeps running.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
import traceback
from pathlib import Path

from .security import check_bind, token_matches
from .session import EFFECTS, OPERATIONS

LAYOUT = "Quad View"  # axial, coronal, sagittal and the 3-D view
TOKEN_COOKIE = "lesiondetect_token"
log = logging.getLogger("LesionDetectWeb")


def _poll_scheduler(interval_s: float = 0.1):
    """A PollScheduler (LesionDetectMRML.logic) on trame's asyncio loop: calls poll() every
    interval until it returns False or the stop function is called."""

    def schedule(poll):
        stopped = {"flag": False}

        async def loop():
            while not stopped["flag"]:
                await asyncio.sleep(interval_s)
                if stopped["flag"]:
                    break
                try:
                    if not poll():
                        break
                except Exception:  # noqa: BLE001 - a failure is reported through onFinished
                    log.exception("poll failed")
                    break

        task = asyncio.get_event_loop().create_task(loop())

        def stop():
            stopped["flag"] = True
            if not task.done() and task is not asyncio.current_task():
                task.cancel()

        return stop

    return schedule


def draw_slice_views_flat(views) -> None:
    """Draw the slice views without multisampling and depth peeling: they show 2-D images and
    flat overlays.  trame-slicer asks every view for 8x MSAA and the markups handles' layer
    peels depth; on a server's software OpenGL (llvmpipe) that made one 600-px slice view cost
    110-160 ms to draw instead of 30-60 ms (Testing/benchmarks/review_web_render.py), and the
    page redraws three of them for each threshold change.  The 3-D view keeps both."""
    from trame_slicer.views import SliceView

    for view in views:
        if isinstance(view, SliceView):
            window = view.render_window()
            window.SetMultiSamples(0)
            for renderer in window.GetRenderers():
                renderer.SetUseDepthPeeling(False)


class ReviewApp:
    """The trame application: a SlicerApp scene, remote-rendered slice and 3-D views, the panel."""

    def __init__(self, server, root, *, model=None, method=None, runner=None, python=None, token=None,
                 reviewer=""):
        from trame_slicer import module as trame_slicer_module
        from trame_slicer.core import LayoutManager, SlicerApp
        from trame_slicer.rca_view import register_rca_factories

        from LesionDetectMRML import headless

        from .session import ReviewSession

        self.server = server
        self.token = token
        server.enable_module(trame_slicer_module)
        self.slicer_app = SlicerApp()
        headless.add_matplotlib_color_tables(self.slicer_app.scene, self.slicer_app.color_logic)
        register_rca_factories(self.slicer_app.view_manager, server)
        self.layout_manager = LayoutManager(self.slicer_app.scene, self.slicer_app.view_manager, server)
        self.layout_manager.register_layout_dict(LayoutManager.default_grid_configuration())
        self.layout_manager.set_layout(LAYOUT)
        draw_slice_views_flat(self.slicer_app.view_manager.get_views())
        self.session = ReviewSession(root=Path(root), scene=self.slicer_app.scene,
                                     segmentations_logic=self.slicer_app.segmentations_logic,
                                     app_logic=self.slicer_app.app_logic, model=model, method=method,
                                     runner=runner, python=python, poll_scheduler=_poll_scheduler(),
                                     segmentation_editor=self.slicer_app.segmentation_editor, reviewer=reviewer)
        self.timings: dict[str, float] = {}
        self._init_state()
        self._build_ui()
        server.state.change("threshold", "min_score", "opacity")(self._on_display)
        if token is not None:
            server.controller.on_server_bind.add(self._require_token)

    # --- state ------------------------------------------------------------------------------

    @property
    def state(self):
        return self.server.state

    def _init_state(self):
        s = self.state
        s.trame__title = "LesionDetect Review"
        s.cases = self.session.case_rows()
        s.dataset = str(self.session.root)
        s.case_id = ""
        s.message = "Choose a case."
        s.error = ""
        s.detecting = False
        s.detect_fraction = 0
        s.detect_text = ""
        s.has_result = False
        s.threshold = 0.5  # applied (re-threshold on the server)
        s.threshold_ui = 0.5  # where the slider is while it is dragged
        s.applied_threshold = None  # the threshold of the segment now (set by the server)
        s.has_probability = False
        s.min_score = 0.0
        s.opacity = 0.5
        s.findings = []
        s.classes = []
        s.review_progress = ""
        s.effect = "None"
        s.brush_mm = 5.0
        s.operations = list(OPERATIONS)
        s.operation, s.operation_value, s.operation_upper = "keep largest island", "", ""
        s.can_undo = s.can_redo = False
        s.box_x, s.box_y, s.box_z = 10.0, 10.0, 10.0  # mm
        s.exported = ""
        s.requests = 0

    def _refresh(self):
        s, session = self.state, self.session
        result = session.logic.result
        s.has_result = result is not None
        s.has_probability = result is not None and result.probability is not None
        found = session.logic.reviewFindings() if result is not None else []  # listed once for both
        s.findings = session.findings(found)
        s.classes = session.classes()
        s.review_progress = session.progress_text(found)
        s.can_undo, s.can_redo = session.can_undo(), session.can_redo()
        s.case_id = session.case_id or ""
        d = session.detect
        s.detecting, s.detect_fraction, s.detect_text = d.running, round(100 * d.fraction), d.text
        s.requests += 1

    def _guard(self, what, function, *args, slice_views_only=False):
        """Run one request from the page: its error (any exception) becomes the page's message."""
        self.state.error = ""
        try:
            out = function(*args)
        except Exception as exc:  # noqa: BLE001 - the server answers and keeps running
            log.info("%s failed: %s", what, traceback.format_exc(limit=3))
            self.state.error = f"{what}: {exc}" if str(exc) else f"{what}: {type(exc).__name__}"
            out = None
        self._refresh()
        self._render(slice_views_only)
        return out

    def _render(self, slice_views_only=False):
        """Ask the views for a new frame (the 3-D view too unless slice_views_only: a display change
        redraws what it shows there through its displayable managers' own render requests)."""
        from trame_slicer.views import SliceView

        for view in self.slicer_app.view_manager.get_views():
            if not slice_views_only or isinstance(view, SliceView):
                view.schedule_render()

    # --- handlers ---------------------------------------------------------------------------

    def open_case(self, case_id=None):
        def run():
            t0 = time.perf_counter()
            self.session.open_case(case_id)
            self.slicer_app.display_manager.reset_views()
            self.timings["open_case_s"] = time.perf_counter() - t0
            self.state.message = f"Case {case_id} opened."
            self.state.exported = ""
        self._guard("Open case", run)

    def next_case(self):
        def update(d):
            try:
                with self.state:
                    self._refresh()
                    if d.error:
                        self.state.error = f"Next case: {d.error}"
                    elif not d.running:
                        self.slicer_app.display_manager.reset_views()
                        self.state.message = d.text
                self._render()
            except Exception as exc:  # noqa: BLE001 - shown on the page; the server keeps running
                log.exception("next case update failed")
                with self.state:
                    self.state.error = f"Next case: {exc}"

        def run():
            case_id, how = self.session.start_next_case(on_update=update)
            if case_id:
                self.slicer_app.display_manager.reset_views()
                self.state.message = f"Next case {case_id}: {how}."
            elif case_id is None:
                self.state.message = how[:1].upper() + how[1:] + "."
            else:
                self.state.message = "Ranking the unreviewed cases with the model ..."
        self._guard("Next case", run)

    def detect(self):
        def update(d):
            try:
                self._detect_update(d)
            except Exception as exc:  # noqa: BLE001 - shown on the page; the server keeps running
                log.exception("detect update failed")
                with self.state:
                    self.state.error = f"Detect: {exc}"
        self._guard("Detect", self.session.start_detect, update)

    def _detect_update(self, d):
        with self.state:
            self._refresh()
            if d.error:
                self.state.error = f"Detect: {d.error}"
            elif not d.running:
                self.state.threshold = self.session.threshold if self.session.threshold is not None else 0.5
                self.state.threshold_ui = self.state.threshold
                self.state.message = "Detection finished: review the findings."
        self._render()

    def cancel(self):
        self._guard("Cancel", self.session.cancel_detect)
        self.state.message = "Detection cancelled: the scene is as it was."

    def _on_display(self, threshold=None, min_score=None, opacity=None, **_):
        if self.session.logic.result is None:
            return
        t0 = time.perf_counter()
        self._guard("Display", self.session.set_display, threshold, min_score, opacity, slice_views_only=True)
        self.timings["display_s"] = time.perf_counter() - t0
        result = self.session.logic.result
        self.state.applied_threshold = result.threshold if result is not None else None  # what the segment shows

    def review(self, action=None):
        self._guard("Review", self.session.review, action)

    def select_finding(self, finding_id=None):
        self._guard("Select finding", self.session.select_finding, finding_id)

    def set_effect(self, name=None, brush_mm=None):
        def run():
            self.session.set_effect(name, brush_mm=float(self.state.brush_mm if brush_mm is None else brush_mm))
            self.state.effect = name or "None"
            self.state.message = f"{name}: drag in a slice view." if name not in ("None", "", None) else ""
        self._guard("Segment editor", run)

    def apply_effect(self, operation=None, value=None, upper=None):
        def run():
            self.session.apply_effect(operation, None if value in ("", None) else float(value),
                                      None if upper in ("", None) else float(upper))
            self.state.message = f"{operation}: applied (Undo reverts it)."
        self._guard("Segment editor", run)

    def undo(self):
        self._guard("Undo", self.session.undo)

    def redo(self):
        self._guard("Redo", self.session.redo)

    def add_box(self, *size_mm):
        """A box of the sizes the page sends with the click (its fields' values at that moment)."""
        def run():
            size = [float(v) for v in size_mm] if size_mm else [float(self.state[f"box_{axis}"]) for axis in "xyz"]
            roi = self.session.add_box(size)
            self.state.message = f"Box added: {' x '.join(f'{v:g}' for v in size)} mm ({roi.GetName()})."
        self._guard("Add box", run)

    def add_point(self):
        self._guard("Add point", lambda: self.session.add_point())

    def place_box(self):
        self._guard("Draw box", self.session.place_box)
        self.state.message = "Click two corners in a slice view."

    def export(self):
        def run():
            result = self.session.export()
            self.state.exported = result.case_id
            self.state.message = f"Exported as case {result.case_id} into {self.session.root}."
            self.state.cases = self.session.case_rows()
        self._guard("Export", run)

    # --- token --------------------------------------------------------------------------------

    def _require_token(self, wslink_server):
        """An aiohttp middleware: every request needs ?token=... once (then a cookie carries it)."""
        from aiohttp import web

        token = self.token

        @web.middleware
        async def check(request, handler):
            given = request.query.get("token")
            if token_matches(token, given):
                response = await handler(request)
                if hasattr(response, "set_cookie"):
                    response.set_cookie(TOKEN_COOKIE, given, httponly=True, samesite="Strict")
                return response
            if token_matches(token, request.cookies.get(TOKEN_COOKIE)):
                return await handler(request)
            return web.Response(status=403, text="LesionDetect review: open the URL with the token printed at start.\n")

        wslink_server.app.middlewares.append(check)

    # --- the page ---------------------------------------------------------------------------

    def _build_ui(self):
        from trame.widgets import html
        from trame_vuetify.ui.vuetify3 import SinglePageWithDrawerLayout
        from trame_vuetify.widgets import vuetify3 as v

        with SinglePageWithDrawerLayout(self.server) as layout:
            self.ui = layout
            layout.title.set_text("LesionDetect Review")
            layout.drawer.width = 380
            with layout.toolbar:
                v.VSpacer()
                html.Span("{{ case_id }}", id="case-id", classes="mx-2")
                v.VBtn("Detect", id="detect", click=self.detect, disabled=("detecting || !case_id",))
                v.VBtn("Cancel", id="cancel", click=self.cancel, disabled=("!detecting",))
                v.VProgressLinear(v_model=("detect_fraction",), id="detect-progress", v_show="detecting",
                                  style="max-width: 160px", height=8, classes="mx-2")
                v.VBtn("Export", id="export", click=self.export, disabled=("!has_result",))
                v.VBtn("Next case", id="next-case", click=self.next_case, disabled=("detecting",))
            with layout.drawer:
                html.Div("{{ error }}", id="error", v_show="error", classes="text-error pa-2")
                html.Div("{{ message }}", id="message", classes="pa-2 text-caption")
                html.Div("{{ review_progress }}", id="review-progress", classes="px-2 text-caption")
                html.Div("exported {{ exported }}", id="exported", v_show="exported", classes="px-2 text-caption")
                v.VListSubheader("Cases")
                with v.VList(density="compact", id="cases", style="max-height: 180px; overflow-y: auto"):
                    v.VListItem(v_for="c in cases", key="c.id", title=("c.id",), subtitle=("c.status",),
                                click=(self.open_case, "[c.id]"), active=("c.id === case_id",),
                                __properties=[("data_case", "data-case")], data_case=("c.id",),
                                classes="case-row")
                v.VListSubheader("Display")
                # re-thresholding a large map takes a while: applied when the drag ends (or per key
                # step), not for every pixel the thumb passes
                v.VSlider(v_model=("threshold_ui",), label="Threshold", min=0.01, max=0.99, step=0.01,
                          thumb_label=True, id="threshold", disabled=("!has_probability",), hide_details=True,
                          end="threshold = $event", keyup="threshold = threshold_ui")
                v.VSlider(v_model=("min_score",), label="Min score", min=0, max=1, step=0.05, thumb_label=True,
                          id="min-score", hide_details=True)
                v.VSlider(v_model=("opacity",), label="Opacity", min=0, max=1, step=0.05, id="opacity",
                          hide_details=True)
                v.VListSubheader("Findings")
                with html.Div(classes="d-flex ga-1 px-2"):
                    v.VBtn("Accept", id="accept", size="small", click=(self.review, "['accept']"),
                           disabled=("!has_result",))
                    v.VBtn("Reject", id="reject", size="small", click=(self.review, "['reject']"),
                           disabled=("!has_result",))
                    v.VBtn("Prev", id="previous", size="small", click=(self.review, "['previous']"),
                           disabled=("!has_result",))
                    v.VBtn("Next", id="next", size="small", click=(self.review, "['next']"),
                           disabled=("!has_result",))
                with html.Table(id="findings", classes="text-caption ma-2", style="width: 95%"):
                    with html.Tr(v_for="f in findings", key="f.id", click=(self.select_finding, "[f.id]"),
                                 style=("f.current ? 'background: rgba(255,200,0,0.25)' : ''",),
                                 classes="finding-row", __properties=[("data_state", "data-state"),
                                                                      ("data_id", "data-id")],
                                 data_state=("f.state",), data_id=("f.id",)):
                        html.Td("{{ f.id }}")
                        html.Td("{{ f.score }}")
                        html.Td("{{ f.state }}")
                        html.Td("{{ f.detail }}")
                with html.Table(id="classes", classes="text-caption ma-2", v_show="classes.length"):
                    with html.Tr(v_for="c in classes", key="c.label"):
                        html.Td("{{ c.label }}")
                        html.Td("{{ c.probability }}")
                v.VListSubheader("Edit")
                with html.Div(classes="d-flex flex-wrap ga-1 px-2 align-center"):
                    for name in (*EFFECTS, "None"):  # trame-slicer's effects (drag or click in a slice view)
                        v.VBtn(name, id=f"effect-{name.lower().replace(' ', '-')}", size="small",
                               click=(self.set_effect, f"['{name}', brush_mm]"), disabled=("!has_result",),
                               color=(f"effect === '{name}' ? 'primary' : ''",))
                    v.VTextField(v_model=("brush_mm",), label="brush mm", type="number", density="compact",
                                 hide_details=True, style="max-width: 90px", id="brush-mm")
                with html.Div(classes="d-flex ga-1 px-2 mt-2 align-center"):
                    # whole-segment operations of the effects: value = min voxels, kernel mm, sigma mm
                    # or the lower intensity; upper = the threshold's upper intensity
                    v.VSelect(v_model=("operation",), items=("operations",), label="operation", density="compact",
                              hide_details=True, id="operation")
                    v.VTextField(v_model=("operation_value",), label="value", type="number", density="compact",
                                 hide_details=True, style="max-width: 70px", id="operation-value")
                    v.VTextField(v_model=("operation_upper",), label="upper", type="number", density="compact",
                                 hide_details=True, style="max-width: 70px", id="operation-upper",
                                 v_show="operation === 'threshold'")
                    v.VBtn("Apply", id="apply-effect", size="small", disabled=("!has_result",),
                           click=(self.apply_effect, "[operation, operation_value, operation_upper]"))
                with html.Div(classes="d-flex ga-1 px-2 mt-2"):
                    v.VBtn("Undo", id="undo", size="small", click=self.undo, disabled=("!can_undo",))
                    v.VBtn("Redo", id="redo", size="small", click=self.redo, disabled=("!can_redo",))
                with html.Div(classes="d-flex ga-1 px-2 mt-2 align-center"):
                    for axis in "xyz":
                        v.VTextField(v_model=(f"box_{axis}",), label=f"{axis} mm", type="number",
                                     density="compact", hide_details=True, style="max-width: 70px",
                                     id=f"box-{axis}")
                    v.VBtn("Add box", id="add-box", size="small", click=(self.add_box, "[box_x, box_y, box_z]"),
                           disabled=("!has_result",))
                with html.Div(classes="d-flex ga-1 px-2 mt-2"):
                    v.VBtn("Draw box", id="draw-box", size="small", click=self.place_box, disabled=("!has_result",))
                    v.VBtn("Add point", id="add-point", size="small", click=self.add_point,
                           disabled=("!has_result",))
            with layout.content:
                self.layout_manager.initialize_layout_grid(layout)
        # the page's requests by name (what a button sends), for scripts and the browser test
        ctrl = self.server.controller
        self.state.triggers = {name: ctrl.trigger_name(getattr(self, name))
                               for name in ("open_case", "next_case", "detect", "cancel", "review", "select_finding",
                                            "set_effect", "apply_effect", "undo", "redo", "add_box", "add_point",
                                            "place_box", "export")}


def serve(root, *, model=None, method=None, port: int = 0, host: str | None = None, runner=None, python=None,
          reviewer: str = "", open_browser: bool = False, token: str | None = None) -> None:
    """Start the page on `host:port` (loopback by default; another host needs the printed token)."""
    from trame.app import get_server

    bind, token, warning = check_bind(host, token)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    server = get_server("lesiondetect-review", client_type="vue3")
    app = ReviewApp(server, root, model=model, method=method, runner=runner, python=python, token=token,
                    reviewer=reviewer)

    @server.controller.add("on_server_ready")
    def ready(**_):
        url = f"http://{bind if ':' not in bind else f'[{bind}]'}:{server.port}/"
        print(f"LesionDetect review of {app.session.root} at {url}" + (f"?token={token}" if token else ""),
              flush=True)

    sys.argv = sys.argv[:1]  # trame's own command line (--port, --host) must not re-read ours
    server.start(port=port, host=bind, open_browser=open_browser, timeout=0, show_connection_info=False)
