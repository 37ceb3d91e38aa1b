"""The alerts page: the rules (whether each is approved, i.e. signed by this installation's
key), the outbox with each message's delivery state and the dead letters; for admins, adding
a webhook rule, removing a rule and approving an unapproved webhook rule. Every change is a
POST with the form's CSRF token, recorded in the audit trail.

Over the network (this page, like the API) only webhook rules are added or approved: a
command, log or plugin rule runs code or writes files on the server, so it is made and
vouched for on the server's machine (``pynomaly alerts add`` / ``approve``)."""

from __future__ import annotations

import math
from urllib.parse import quote, urlsplit

from starlette.responses import RedirectResponse, Response

from pynomaly import PynomalyError
from pynomaly.service import alerts

from ..detection import audited
from ..errors import HTTPError, status_of
from ..state import ServerState
from .render import page, render

OUTBOX_STATES = ("pending", "sending", "sent", "dead")
SHOWN = 100


def _shown_target(rule: dict, full: bool) -> str:
    """Where a rule sends, as a role may see it: in full for admins; for others a webhook's
    scheme and host only (a chat service's webhook URL is itself the key to post to it) and
    no command line or file path."""
    if full:
        return rule["target"]
    if rule["channel"] == "webhook":
        u = urlsplit(rule["target"])
        return f"{u.scheme}://{u.hostname or ''}/…"
    return "(shown to admins)"


def _public(rule: dict, full: bool) -> dict:
    """A rule as the page shows it: never its webhook secret (receivers' key to verify us)."""
    return dict({k: v for k, v in rule.items() if k != "secret"}, target=_shown_target(rule, full))


def _message(m: dict, targets: dict) -> dict:
    payload = m["payload"] if isinstance(m["payload"], dict) else {}
    error = m["last_error"] or ""
    for target, shown in targets.items():  # a delivery error names the URL it failed on
        error = error.replace(target, shown)
    return dict(m, detector=(payload.get("commonLabels") or {}).get("detector", ""),
                status=payload.get("status", ""), last_error=error)


def _view(home, state, full: bool) -> dict:
    rules = alerts.list_rules(home)
    targets = {r["target"]: _shown_target(r, full) for r in rules if not full}
    messages = [_message(m, targets) for m in alerts.outbox(home, state, SHOWN)]
    dead = len(alerts.outbox(home, "dead", SHOWN)) if state != "dead" else len(messages)
    return {"rules": [_public(r, full) for r in rules], "messages": messages, "dead": dead}


def _rendered(request, st, view: dict, state, status: int = 200, **extra) -> Response:
    return render(request, "alerts.html", status, **view, state=state or "", states=OUTBOX_STATES,
                  message=request.query_params.get("done", "")[:200], values=extra.pop("values", {}), **extra)


@page("read")
async def alerts_page(request, st: ServerState, p, form) -> Response:
    state = request.query_params.get("state") or None
    view = await st.run(_view, str(st.home), state, p.may("manage"))
    return _rendered(request, st, view, state)


def _optional_number(form, field: str, label: str, integer: bool = False):
    text = (form.get(field) or "").strip()
    if not text:
        return None
    try:
        v = int(text) if integer else float(text)
    except ValueError:
        raise HTTPError(400, f"{label} must be a {'whole number' if integer else 'number'}, got {text[:40]!r}") from None
    if not math.isfinite(v):
        raise HTTPError(400, f"{label} must be a finite number")
    return v


@page("manage")
async def add(request, st: ServerState, p, form) -> Response:
    values = {k: (form.get(k) or "").strip() for k in ("detector", "url", "score_above", "rate_above", "count",
                                                        "within", "drift_above", "score_drift_above")}
    try:
        kwargs = {"score_above": _optional_number(form, "score_above", "the score"),
                  "rate_above": _optional_number(form, "rate_above", "the anomaly rate"),
                  "count": _optional_number(form, "count", "the count", integer=True),
                  "within": _optional_number(form, "within", "the window (seconds)"),
                  # Rules on drift (issue 24), checked by alerts.add_rule as the CLI's --drift-above are.
                  "drift_above": _optional_number(form, "drift_above", "drift above (PSI)"),
                  "score_drift_above": _optional_number(form, "score_drift_above", "score drift above (PSI)")}
        if not values["detector"]:
            raise HTTPError(400, "name the detector whose detections the rule watches")
        rule = await audited(request, p, "alerts.add", values["detector"], lambda: st.run(
            lambda: alerts.add_rule(str(st.home), values["detector"], "webhook", values["url"], from_network=True,
                                    **kwargs)), lambda r: {"rule": r["id"], "channel": "webhook", "target": r["target"]})
    except (HTTPError, ValueError, PynomalyError) as e:  # the form again, with the reason and what was typed
        status, text, _ = status_of(e)
        view = await st.run(_view, str(st.home), None, True)
        return _rendered(request, st, view, None, status, error=text, values=values)
    # The secret is shown once, here, to the admin who made the rule (receivers verify with it);
    # the list never shows it.
    view = await st.run(_view, str(st.home), None, True)
    return _rendered(request, st, view, None, 201, added=rule)


async def _change(request, st: ServerState, p, action: str, fn, verb: str) -> Response:
    rid = request.path_params["rule_id"]

    def work() -> dict:
        try:
            return fn(str(st.home), rid)
        except alerts.RuleNotFoundError as e:
            raise HTTPError(404, str(e)) from None

    rule = await audited(request, p, action, rid, lambda: st.run(work),
                         lambda r: {"detector": r["detector"], "channel": r["channel"], "target": r["target"]})
    return RedirectResponse("/ui/alerts?done=" + quote(f"{verb} rule {rid} ({rule['detector']} → {rule['channel']})"),
                            status_code=303)


@page("manage")
async def remove(request, st: ServerState, p, form) -> Response:
    return await _change(request, st, p, "alerts.remove", alerts.remove_rule, "removed")


def _approve_webhook(home: str, rule_id: str) -> dict:
    rule = next((r for r in alerts.list_rules(home) if r["id"] == rule_id), None)
    if rule is None:
        raise alerts.RuleNotFoundError(f"no alert rule {rule_id!r}")
    if rule["channel"] != "webhook":
        raise HTTPError(403, f"rule {rule_id} is a {rule['channel']} rule: it runs code or writes files on the "
                        f"server, so approve it on the server's machine (pynomaly alerts approve {rule_id})")
    return alerts.approve_rule(home, rule_id)


@page("manage")
async def approve(request, st: ServerState, p, form) -> Response:
    return await _change(request, st, p, "alerts.approve", _approve_webhook, "approved")
