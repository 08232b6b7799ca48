"""The server actions that change what an instance is, with Nova's bodies
and answers: resize, confirmResize, revertResize, rescue, unrescue and
trigger_crash_dump (``Routes.server_action`` dispatches them here).

- ``{"resize": {"flavorRef": "<id or name>"}}``: 202; the server goes
  RESIZE, then VERIFY_RESIZE. An unknown flavor (a private one the
  project may not use included), the same flavor or a disk that would
  shrink is 400, more cores or RAM than the quota leaves 403, as in Nova
  (``OS-DCF:diskConfig`` is accepted and changes nothing: vmops never
  touches the guest's partitions).
- ``{"confirmResize": null}``: 204. ``{"revertResize": null}``: 202.
- ``{"rescue": {"adminPass"?, "rescue_image_ref"?}}`` (or ``null``): 200
  with ``{"adminPass": ...}``, the one given or a new one (``{}`` with
  ``enable_instance_password`` off, as Nova); the server goes RESCUE. An
  unknown image is 400, as rebuild's.
- ``{"unrescue": null}``: 202.
- ``{"trigger_crash_dump": null}``: 202, from microversion 2.17 (404 below
  it, as Nova's versioned actions); 409 unless the guest runs.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

from vmops.api import parse
from vmops.api.server import Request, Response
from vmops.compute import flavor_access
from vmops.compute.manager import Compute
from vmops.errors import FlavorNotFound, ImageNotFound, Invalid, NotFound

Handler = Callable[[str, Any, Request], Response | None]
CRASH_DUMP_MICROVERSION = "2.17"


def handlers(compute: Compute) -> dict[str, Handler]:
    """The handlers of these actions: (server id, argument, request) -> the
    action's own answer, or None for a bare 202."""

    def resize(ref: str, arg: Any, req: Request) -> None:
        try:
            # A private flavor the caller's project may not use is no flavor.
            flavor = flavor_access.visible_flavor(compute.store, _flavor_ref(arg),
                                                  req.context.project_id, req.context.is_admin)
            compute.resize(ref, flavor.id)
        except FlavorNotFound as exc:
            raise Invalid(reason=exc.message) from None  # Nova: 400 for a bad flavorRef

    def confirm(ref: str, arg: Any, _req: Request) -> Response:
        parse.no_argument("confirmResize", arg)
        compute.confirm_resize(ref)
        return Response(204)

    def revert(ref: str, arg: Any, _req: Request) -> None:
        parse.no_argument("revertResize", arg)
        compute.revert_resize(ref)

    def rescue(ref: str, arg: Any, _req: Request) -> Response:
        image, password = _rescue_options(arg)
        password = password or secrets.token_urlsafe(9)  # Nova's 12 characters
        try:
            compute.rescue(ref, image, password)
        except ImageNotFound as exc:
            raise Invalid(reason=exc.message) from None  # as rebuild's imageRef
        shown = compute.settings.enable_instance_password
        return Response(200, {"adminPass": password} if shown else {})

    def unrescue(ref: str, arg: Any, _req: Request) -> None:
        parse.no_argument("unrescue", arg)
        compute.unrescue(ref)

    def crash_dump(ref: str, arg: Any, req: Request) -> None:
        if not req.at_least(CRASH_DUMP_MICROVERSION):
            raise NotFound(what=f"the action trigger_crash_dump below microversion "
                           f"{CRASH_DUMP_MICROVERSION}")
        parse.no_argument("trigger_crash_dump", arg)
        compute.trigger_crash_dump(ref)

    return {"resize": resize, "confirmResize": confirm, "revertResize": revert,
            "rescue": rescue, "unrescue": unrescue, "trigger_crash_dump": crash_dump}


def _flavor_ref(arg: Any) -> str:
    """resize: {"flavorRef": id or name, "OS-DCF:diskConfig"?: AUTO | MANUAL}."""
    if not isinstance(arg, dict):
        raise Invalid(reason='resize takes an object: {"flavorRef": "<flavor>"}')
    parse.no_unknown(arg, {"flavorRef", "OS-DCF:diskConfig"}, "resize")
    if arg.get("OS-DCF:diskConfig") not in (None, "AUTO", "MANUAL"):
        raise Invalid(reason="OS-DCF:diskConfig must be AUTO or MANUAL")
    return parse.reference(arg, "flavorRef")


def _rescue_options(arg: Any) -> tuple[str | None, str | None]:
    """rescue: null, or {"adminPass"?: str, "rescue_image_ref"?: image id or name}."""
    if arg is None:
        return None, None
    if not isinstance(arg, dict):
        raise Invalid(reason='rescue takes null or an object: {"adminPass"?, '
                      '"rescue_image_ref"?}')
    parse.no_unknown(arg, {"adminPass", "rescue_image_ref"}, "rescue")
    image = parse.reference(arg, "rescue_image_ref") if "rescue_image_ref" in arg else None
    return image, parse.field(arg, "adminPass", str) or None
