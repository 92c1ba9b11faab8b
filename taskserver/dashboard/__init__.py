"""The web console at ``/dashboard``: plain HTML, CSS and JavaScript files served by Flask, no build step.

The page itself holds no data and needs no token; everything it shows comes from ``/api/*`` (with
``Authorization: Bearer <token>``) and from the ``/dashboard`` Socket.IO namespace (``auth: {token}``).
The browser libraries it uses are files in ``static/vendor/`` (see its README): nothing comes from the internet."""

from pathlib import Path

from flask import Blueprint, redirect, send_from_directory

STATIC = Path(__file__).parent / "static"

# Only this server's own files, scripts and sockets: no CDN can sneak in, and no inline script runs.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)

blueprint = Blueprint("dashboard", __name__, static_folder="static", static_url_path="/dashboard/static")


@blueprint.route("/dashboard")
def index():
    """The console's page."""
    response = send_from_directory(STATIC, "index.html")
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


@blueprint.route("/dashboard/")
def index_slash():
    """``/dashboard/`` is the same page."""
    return redirect("/dashboard", code=308)
