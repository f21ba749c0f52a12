"""`ProfileView(profile)`: where a run's time and memory went, inline."""

from __future__ import annotations

from pathlib import Path

import anywidget
import traitlets

from ..analysis import Profile
from ..errors import InputError, WrongTypeError
from ..export import profile as export
from ._frontend import Answers, StaticFallback, bundle


class ProfileView(Answers, StaticFallback, anywidget.AnyWidget):
    """`lw.ProfileView(lw.profile(model, prompt, max_new_tokens=8))`: the findings, an icicle of
    the module tree by time (click to zoom), the memory timeline with the steps, a sortable table,
    export (PNG, SVG, HTML, and the Chrome trace for Perfetto / HTA)."""

    _esm = bundle("profile_view")
    _css = bundle("profile_view", ".css")

    title = traitlets.Unicode(help="the view's title").tag(sync=True)
    findings = traitlets.List(traitlets.Unicode(), help="the main facts, in words").tag(sync=True)
    modules = traitlets.List(traitlets.Dict(), help="a row per module: Profile.modules").tag(sync=True)
    timeline = traitlets.List(traitlets.List(traitlets.Float()), help="[seconds, bytes allocated]").tag(sync=True)
    step_times = traitlets.List(traitlets.Float(), help="when each forward started").tag(sync=True)
    steps = traitlets.List(traitlets.Dict(), help="per forward: seconds, KV cache bytes").tag(sync=True)
    zoom = traitlets.Unicode("", help="the module the icicle is zoomed into ('' for the whole model)").tag(sync=True)

    def __init__(self, profile: Profile, **kwargs):
        if not isinstance(profile, Profile):
            raise WrongTypeError(f"ProfileView takes a Profile (from lw.profile(...)), got {type(profile).__name__}")
        self.profile = profile
        super().__init__(
            title=repr(profile),
            findings=profile.findings(),
            modules=profile.modules,
            timeline=[[t, float(b)] for t, b in profile.timeline],
            step_times=profile.step_times,
            steps=profile.steps,
            **kwargs,
        )

    @traitlets.validate("zoom")
    def _check_zoom(self, proposal):
        if proposal.value and proposal.value not in {m["module"] for m in self.profile.modules}:
            raise traitlets.TraitError(f"no module {proposal.value!r} in this profile")
        return proposal.value

    def static_figure(self) -> bytes:
        return export.render(self.profile, "png", self.zoom)

    def static_text(self) -> str:
        return "\n".join([self.title, *self.findings])

    def save(self, path: str | Path) -> Path:
        """.png / .svg (icicle and memory), standalone .html, or .json (the Chrome trace)."""
        return export.save(self.profile, path, self.zoom)

    def answer(self, request: dict) -> tuple[dict, list[bytes]]:
        """The front end's requests: only exports ({"what": "export", "format": ...})."""
        if request.get("what") != "export":
            raise InputError(f"unknown request {request.get('what')!r}: this view answers 'export'")
        fmt = str(request.get("format"))
        data = export.render(self.profile, fmt, self.zoom)
        return {"type": "file", "name": "profile.trace.json" if fmt == "json" else f"profile.{fmt}", "format": fmt}, [
            data
        ]
