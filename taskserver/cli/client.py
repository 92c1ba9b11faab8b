"""The CLI's HTTP side: one ``Client`` per run, and the two ways a request can go wrong, each with its exit code."""

import re
from enum import IntEnum
from urllib.parse import quote

import click
import requests


class Exit(IntEnum):
    """The CLI's exit codes (the README lists them too)."""

    OK = 0  # done; with ``--wait``: the task completed (``batch``: every task of it)
    FAILED = 1  # ``--wait``: the task failed (``batch``: a task of it failed, or the batch was aborted)
    USAGE = 2  # click's own: an unknown option, ``--data`` that is not JSON, ...
    CANCELLED = 3  # ``--wait``: the task was cancelled (``batch``: the batch, or a task of it)
    REFUSED = 4  # the server answered with an error: its message and error_code are printed
    UNREACHABLE = 5  # no answer from the server, or an answer that is not taskserver's
    INTERRUPTED = 130  # Ctrl-C while waiting: the task goes on


class ApiError(click.ClickException):
    """The server refused the request: its ``message``, ``error_code``, HTTP status and per-field ``errors``."""

    exit_code = Exit.REFUSED

    def __init__(self, message, error_code, status, errors=None):
        super().__init__(message or f"HTTP {status}")
        self.error_code = error_code
        self.status = status
        self.errors = errors or {}

    def format_message(self):
        lines = [f"{self.message} ({self.error_code or 'no error_code'}, HTTP {self.status})"]
        lines += [f"  {field}: {problem}" for field, problem in _flatten(self.errors)]
        return "\n".join(lines)


class Unreachable(click.ClickException):
    """The server did not answer, or what answered is not a taskserver."""

    exit_code = Exit.UNREACHABLE


class Client:
    """Calls the server's HTTP API with the operator token, if any; every answer is the server's JSON."""

    def __init__(self, url, token=None, timeout=10.0):
        self.url = (url if "://" in url else f"http://{url}").rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def get(self, path, **params):
        """GET ``path`` with query ``params`` (None values left out; a list is repeated)."""
        query = {key: value for key, value in params.items() if value is not None}
        return self.request("GET", path, params=query)

    def post(self, path, body=None):
        """POST ``body`` as JSON to ``path``."""
        return self.request("POST", path, json=body)

    def put(self, path, body):
        """PUT ``body`` as JSON to ``path``."""
        return self.request("PUT", path, json=body)

    def patch(self, path, body):
        """PATCH ``body`` as JSON to ``path``."""
        return self.request("PATCH", path, json=body)

    def delete(self, path):
        """DELETE ``path``."""
        return self.request("DELETE", path)

    def request(self, method, path, **kwargs):
        """The JSON answer of a successful request; ``ApiError`` or ``Unreachable`` otherwise."""
        try:
            response = self.session.request(method, self.url + path, timeout=self.timeout, **kwargs)
        except requests.Timeout as error:
            raise Unreachable(f"{self.url} did not answer within {self.timeout:g} s; {HINT}") from error
        except requests.RequestException as error:
            raise Unreachable(f"cannot reach {self.url}: {_reason(error)}; {HINT}") from error
        try:
            answer = response.json()
        except ValueError as error:
            what = f"HTTP {response.status_code}, {response.headers.get('Content-Type') or 'no content type'}"
            raise Unreachable(f"{self.url} is not a taskserver (it answered {what}); {HINT}") from error
        if not response.ok or (isinstance(answer, dict) and answer.get("success") is False):
            answer = answer if isinstance(answer, dict) else {}
            raise ApiError(answer.get("message"), answer.get("error_code"), response.status_code, answer.get("errors"))
        return answer


def path(template, *ids):
    """``template`` with each id quoted into it: ``path("/api/task/{}", task_id)``."""
    return template.format(*(quote(str(value), safe="") for value in ids))


HINT = "check --url or TASKSERVER_URL"
ERRNO = re.compile(r"\[Errno -?\d+\] ([^'\")]+)")


def _reason(error):
    """The useful part of what requests says: the socket's error ('Connection refused'), or its first line."""
    found = ERRNO.search(str(error))
    if found:
        return found.group(1).strip()
    if isinstance(error, requests.ConnectionError):
        return "connection failed"
    return str(error).splitlines()[0] if str(error) else type(error).__name__


def _flatten(errors, prefix=""):
    """``{"data": {"product_ids": ["..."]}}`` as ``("data.product_ids", "...")`` pairs."""
    if isinstance(errors, dict):
        for key, value in errors.items():
            yield from _flatten(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(errors, list) and all(isinstance(item, str) for item in errors):
        yield prefix, "; ".join(errors)
    else:
        yield prefix, str(errors)
