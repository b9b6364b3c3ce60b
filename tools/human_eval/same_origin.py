"""Refusing requests that change something when a page of another origin sent them.

The rater's token already keeps other sites out (a foreign page does not know it), but a leaked link must not
let any page a rater visits answer for them. Browsers tell where a request comes from: `Sec-Fetch-Site`, and
`Origin` on every POST (`Referer` where an old browser sends no `Origin`); each of them that is present must
say this server's own origin. A request with none of them comes from no browser page (a script, curl): no
cross-site forgery, and it still needs a token. Behind a reverse proxy the proxy must pass on the `Host`
header the browser sent.
"""

from __future__ import annotations

import urllib.parse

from aiohttp import web
from aiohttp.typedefs import Handler

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
SAME_ORIGIN_SITES = frozenset({"same-origin", "none"})  # "none": the user opened the address themselves


def foreign_source(request: web.Request) -> str | None:
    """The header showing that `request` came from a page of another origin, as `Name: value`; None if none does."""
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None and site not in SAME_ORIGIN_SITES:
        return f"Sec-Fetch-Site: {site}"
    for header in ("Origin", "Referer"):  # Referer only where there is no Origin
        value = request.headers.get(header)
        if value is not None:
            return None if urllib.parse.urlsplit(value).netloc.lower() == request.host.lower() else f"{header}: {value}"
    return None


@web.middleware
async def refuse_cross_origin(request: web.Request, handler: Handler) -> web.StreamResponse:
    """403 before the handler reads anything, for a request that changes something and came from elsewhere."""
    if request.method not in SAFE_METHODS and (source := foreign_source(request)):
        raise web.HTTPForbidden(text=f"refused: this request came from another site ({source}); answers are "
                                     "taken only from this server's own pages\n")
    return await handler(request)
