"""What every page shares: the templates, rendering with the signed-in person and the CSRF
token, error pages, reading forms within the body limit, and the ``page`` decorator that
checks the session, the form's CSRF token and the role before a handler runs."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional
from urllib.parse import quote

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from .. import sessions
from ..body import deadline, read_body
from ..errors import HTTPError, status_of
from ..state import state_of
from ..tokens import Principal, TokenError

HERE = Path(__file__).parent
_env = Environment(loader=FileSystemLoader(str(HERE / "templates")), autoescape=select_autoescape(["html"]),
                   trim_blocks=True, lstrip_blocks=True)
_env.filters["pct"] = lambda v: "–" if v is None else f"{100 * v:.2f}%"
_env.filters["num"] = lambda v: ("–" if v is None else v if isinstance(v, str)
                                 else f"{v:.6g}" if isinstance(v, float) else f"{v:,}")
_env.filters["when"] = lambda s: "–" if not s else str(s)[:19].replace("T", " ")


def epoch(t) -> Optional[float]:
    """A Unix time from what the service returns: a Unix time, an ISO 8601 string (UTC when
    it names no zone) or a datetime; None for none."""
    if t is None or t == "":
        return None
    if isinstance(t, (int, float)):
        return float(t)
    if isinstance(t, str):
        t = datetime.fromisoformat(t)
    return (t if t.tzinfo else t.replace(tzinfo=timezone.utc)).timestamp()


def duration(seconds: Optional[float]) -> str:
    """A span as people say it: "45 s", "12 min", "3 h", "2 h 5 min", "4 days"."""
    if seconds is None:
        return "–"
    s = max(0.0, float(seconds))
    if s < 60:
        return f"{s:.0f} s" if s >= 10 else f"{s:.1f} s"
    if s < 3600:
        return f"{s // 60:.0f} min"
    if s < 86400:
        h, m = divmod(int(s // 60), 60)
        return f"{h} h" if m == 0 or h >= 10 else f"{h} h {m} min"
    d = int(s // 86400)
    return f"{d} day" if d == 1 else f"{d} days"


def ago(t, now: Optional[float] = None) -> str:
    """How long ago ``t`` (see :func:`epoch`) was: "just now", "3 h ago", "in 5 min"."""
    e = epoch(t)
    if e is None:
        return "–"
    delta = (time.time() if now is None else now) - e
    if abs(delta) < 1:
        return "just now"
    return f"{duration(delta)} ago" if delta > 0 else f"in {duration(-delta)}"


_env.filters["ago"] = ago
_env.filters["duration"] = duration


def over_tls(request: Request) -> bool:
    return request.url.scheme == "https"


def render(request: Request, template: str, status: int = 200, **ctx) -> HTMLResponse:
    """The page ``template`` with what every page shows (who is signed in, the CSRF token)."""
    st = state_of(request)
    nonce = request.cookies.get(sessions.CSRF_COOKIE)
    fresh = not nonce
    if fresh:
        nonce = sessions.new_nonce()
    p: Optional[Principal] = getattr(request.state, "principal", None)
    body = _env.get_template(template).render(
        user=p, may=(p.may if p is not None else (lambda action: False)), auth=st.verifier is not None,
        csrf=sessions.csrf_token(st.home, nonce, sessions.session_id(p)), path=request.url.path, **ctx)
    r = HTMLResponse(body, status_code=status, headers={"Cache-Control": "no-store"})
    if fresh:
        r.headers.append("set-cookie", sessions.cookie(sessions.CSRF_COOKIE, nonce, max_age=30 * 86400,
                                                       secure=over_tls(request)))
    r.headers["X-Frame-Options"] = "DENY"
    r.headers["Content-Security-Policy"] = ("default-src 'self'; img-src 'self' data:; style-src 'self'; "
                                            "script-src 'self'; form-action 'self'; frame-ancestors 'none'")
    return r


def error_page(request: Request, err: BaseException) -> Response:
    status, message, _ = status_of(err)
    if isinstance(err, TokenError) or status == 401:
        return _to_signin(request, expired=True)
    titles = {400: "That did not work", 403: "Not allowed", 404: "Not found", 409: "Not possible now",
              413: "Too large", 415: "Not a file this page reads"}
    return render(request, "error.html", status, title=titles.get(status, "Something went wrong"), message=message)


# What the sign-in page may say when sent there (a code in the URL, never the text: a link
# from elsewhere cannot make the page say anything else).
SIGNIN_MESSAGES = {"expired": "your session has ended or is no longer valid; sign in again"}


def _to_signin(request: Request, expired: bool = False) -> Response:
    target = "/?next=" + quote(request.url.path, safe="/")
    if expired:
        target += "&why=expired"
    return RedirectResponse(target, status_code=303)


def safe_next(url: Optional[str]) -> str:
    """Where to go after signing in: a path on this server only (no open redirect)."""
    if url and url.startswith("/ui/") and "//" not in url and "\\" not in url:
        return url
    return "/ui/detectors"


async def read_form(request: Request, limit: int):
    """The form of a POST, its body at most ``limit`` bytes. A body declared larger is read
    and dropped before answering, so that the browser sees the page that says so (a browser
    still sending a file does not show an answer cut short)."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        drained = 0
        with contextlib.suppress(asyncio.TimeoutError, TimeoutError):  # not forever, nor without end
            with deadline(min(30.0, state_of(request).settings.request_timeout_s)):
                async for chunk in request.stream():
                    drained += len(chunk)
                    if drained > 4 * limit + (64 << 20):
                        break
        raise HTTPError(413, f"the upload is {int(length) / 2**20:.1f} MB; this server accepts at most "
                        f"{limit / 2**20:.1f} MB per request (pynomaly api --max-body)")
    body = await read_body(request, limit)
    request._body = body  # parse what was read within the limit
    try:
        return await request.form(max_files=1, max_fields=20, max_part_size=64 * 1024)
    except Exception as e:  # noqa: BLE001 - a malformed form is the sender's error
        raise HTTPError(400, f"the form could not be read: {getattr(e, 'detail', None) or e}") from None


def page(action: Optional[str] = None):
    """A page handler for callers whose role may ``action`` (None: anyone signed in); POSTs
    must carry the form's CSRF token. The handler gets ``(request, state, principal, form)``."""

    def wrap(fn):
        @functools.wraps(fn)
        async def handler(request: Request) -> Response:
            st = state_of(request)
            try:
                p = sessions.principal(st, request)
                if p is None:
                    return _to_signin(request, expired=request.cookies.get(sessions.SESSION_COOKIE) is not None)
                request.state.principal = p
                form = None
                if request.method == "POST":
                    form = await read_form(request, st.settings.max_body_bytes)
                    if not sessions.csrf_ok(st.home, request.cookies.get(sessions.CSRF_COOKIE), form.get("csrf"),
                                            sessions.session_id(p)):
                        raise HTTPError(403, "the form's security token is missing or stale: reload the page and "
                                        "try again")
                if action is not None:
                    p.require(action)
                try:
                    return await fn(request, st, p, form)
                finally:
                    if form is not None:
                        await form.close()
            except Exception as e:  # noqa: BLE001 - every failure is a page, never a trace
                return error_page(request, e)

        return handler

    return wrap
