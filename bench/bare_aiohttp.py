"""The bare-aiohttp reference for the warm redirect benchmark: one handler, one fixed 302.

Same stack as ``geofed serve``: aiohttp's ``web.run_app`` on uvloop, one process, a catch-all route
like geofed's, ``access_log=None``. It does no work besides building the response, so the ratio
geofed / this server is the cost of geofed's own request path on top of the framework.

Usage: ``python bench/bare_aiohttp.py --port 18080 --location http://127.0.0.1:8080/...``
"""

from __future__ import annotations

import argparse

import uvloop
from aiohttp import web


def build_app(location: str) -> web.Application:
    headers = {"Location": location}

    async def redirect(request: web.Request) -> web.Response:
        return web.Response(status=302, headers=headers)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", redirect)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--location", required=True)
    args = parser.parse_args()
    uvloop.install()
    web.run_app(build_app(args.location), host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
