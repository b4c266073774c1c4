"""HTML pages: one template (templates/page.html), every value escaped unless it is markup we built.

Headers: no caching (pages are per user), a CSP that allows no script and no external asset (the
charts are inline SVG), no Referer (some URLs carry one-time values)."""

from __future__ import annotations

import html
from pathlib import Path
from string import Template

from aws_lambda_powertools.event_handler import Response

PAGE_TEMPLATE = (Path(__file__).parent / "templates" / "page.html").read_text()
_PAGE = Template(PAGE_TEMPLATE)

NO_STORE = {"Cache-Control": "no-store"}


def csp(form_action: str = "'self'") -> str:
    """No script, no external asset; forms post only to us (and, on /me, to the upload bucket)."""
    return (f"default-src 'none'; style-src 'unsafe-inline'; form-action {form_action}; base-uri 'none'; "
            "frame-ancestors 'none'")


HTML_HEADERS = {
    **NO_STORE,
    "Content-Security-Policy": csp(),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}

esc = html.escape


def render(title: str, heading: str, content_html: str, *, wide: bool = False, style: str = "") -> str:
    """`style`: CSS of this page's own parts (the stats pages' charts), added to the head."""
    return _PAGE.substitute(title=esc(title), heading=esc(heading), content=content_html,
                            main_class="wide" if wide else "", head=f"<style>{style}</style>" if style else "")


def page(status: int, title: str, heading: str, content_html: str, headers: dict[str, str] | None = None,
         *, cookies: list | None = None, wide: bool = False, style: str = "") -> Response:
    return Response(status_code=status, content_type="text/html; charset=utf-8",
                    body=render(title, heading, content_html, wide=wide, style=style),
                    headers={**HTML_HEADERS, **(headers or {})}, cookies=cookies or [])


def message_page(status: int, title: str, text: str, headers: dict[str, str] | None = None, *,
                 start_again: bool = False, home: bool = False) -> Response:
    more = ('<p><a href="/auth/login">Sign in with Spotify</a></p>' if start_again
            else '<p><a href="/me">Back to my archive</a></p>' if home else "")
    return page(status, title, title, f"<p>{esc(text)}</p>{more}", headers)


def redirect(location: str, *, status: int = 303, cookies: list | None = None) -> Response:
    return Response(status_code=status, headers={**NO_STORE, "Location": location, "Referrer-Policy": "no-referrer"},
                    cookies=cookies or [])
