"""The ``curl`` examples in the READMEs call routes that exist, with the right HTTP method.

Each example's method and path are checked against ``service.app.create_app().openapi()["paths"]``
(path templates such as ``/v1/videos/{video_id}`` match concrete ids) plus the app's routes that are
left out of the schema. An example for a route that does not exist fails the test.
"""

from __future__ import annotations

import functools
import importlib.util
import re
import shlex
from pathlib import Path

import pytest
from deploy_helpers import REPO

READMES = [REPO / "README.md", REPO / "service" / "README.md", REPO / "docker" / "README.md", REPO / "k8s" / "README.md"]
# curl options whose next token is their value (so it is not mistaken for the URL).
OPTIONS_WITH_VALUE = {
    "-H", "--header", "-d", "--data", "--data-raw", "--data-binary", "--data-urlencode", "--json", "-F",
    "--form", "-X", "--request", "-o", "--output", "-u", "--user", "-T", "--upload-file", "-w",
    "--write-out", "-m", "--max-time", "--connect-timeout", "--retry", "-A", "--user-agent", "-e",
    "--referer", "--cacert", "--cert", "--key", "-b", "--cookie", "-c", "--cookie-jar", "--resolve",
}
BODY_OPTIONS = {"-d", "--data", "--data-raw", "--data-binary", "--data-urlencode", "--json", "-F", "--form"}
SHELL_OPERATORS = {"|", "||", "&&", ";", "&", ">", ">>", "<"}
URL = re.compile(r"^(?:https?://[^/\s]+|\$\{?\w+\}?|localhost(?::\d+)?|127\.0\.0\.1(?::\d+)?)(/[^\s?#]*)?")


def commands(markdown: str) -> list[str]:
    """Each ``curl`` command in the text (``\\`` continuations joined, ``&&``/``;``/``|`` chains split)."""
    joined = re.sub(r"\s*\\\n\s*", " ", markdown)
    segments = (part.strip() for line in joined.splitlines() for part in re.split(r"&&|\|\||;|\|", line))
    return [segment for segment in segments if re.search(r"(^|[\s$(`])curl\s", segment)]


def method_and_path(command: str) -> tuple[str, str] | None:
    """``("POST", "/v1/moments")`` for one curl command line, or None when it has no URL."""
    try:
        tokens = shlex.split(command, comments=False)
    except ValueError:
        tokens = command.split()
    tokens = tokens[next(i for i, t in enumerate(tokens) if t.endswith("curl")) + 1 :]
    method, path, has_body, skip = None, None, False, False
    for index, token in enumerate(tokens):
        if skip:
            skip = False
            continue
        if token in SHELL_OPERATORS:
            break
        if token in ("-X", "--request"):
            method = tokens[index + 1].upper()
        elif token in ("-I", "--head"):
            method = "HEAD"
        if token in BODY_OPTIONS or token in ("-T", "--upload-file"):
            has_body = True
        if token in OPTIONS_WITH_VALUE:
            skip = True
        elif not token.startswith("-") and path is None and (match := URL.match(token)):
            path = match.group(1) or "/"
    if path is None:
        return None
    if method is None:
        uploads = any(t in ("-T", "--upload-file") for t in tokens)
        method = "PUT" if uploads else "POST" if has_body else "GET"
    return method, path


@functools.cache
def _routes() -> list[tuple[re.Pattern[str], set[str]]]:
    from service.app import create_app

    app = create_app()
    routes = [
        (template, {method.upper() for method in operations})
        for template, operations in app.openapi()["paths"].items()
    ]
    for route in app.routes:  # routes excluded from the schema (e.g. mounted apps)
        if not getattr(route, "include_in_schema", True):
            routes.append((route.path, set(getattr(route, "methods", None) or {"GET"})))
    return [(re.compile(re.sub(r"\{[^/]+\}", "[^/]+", template) + "/?"), methods) for template, methods in routes]


def test_curl_parsing_reads_method_and_path() -> None:
    examples = {
        'curl -s localhost:8000/readyz': ("GET", "/readyz"),
        'curl -X PUT -H "X-API-Key: $KEY" --data-binary @f.npz "$API/v1/videos/vid1/features"':
            ("PUT", "/v1/videos/vid1/features"),
        "curl http://127.0.0.1:8000/v1/moments -H 'Content-Type: application/json' -d '{\"q\": 1}'":
            ("POST", "/v1/moments"),
        "curl -sf http://localhost:8000/metrics | grep trdetr_": ("GET", "/metrics"),
    }
    for command, expected in examples.items():
        assert method_and_path(command) == expected, command
    assert commands("run:\ncurl -X DELETE \\\n  localhost:8000/v1/videos/a\n") == [
        "curl -X DELETE localhost:8000/v1/videos/a"
    ]
    assert commands("curl -sf localhost:8000/readyz && curl -s localhost:8000/metrics | grep x") == [
        "curl -sf localhost:8000/readyz", "curl -s localhost:8000/metrics"
    ]


@pytest.mark.parametrize("readme", READMES, ids=lambda p: str(p.relative_to(REPO)))
def test_readme_curl_examples_match_the_api_routes(readme: Path) -> None:
    if importlib.util.find_spec("service.app") is None:
        pytest.skip("service.app does not exist yet: no routes to check the README examples against")
    examples = [(c, method_and_path(c)) for c in commands(readme.read_text())] if readme.exists() else []
    examples = [(command, parsed) for command, parsed in examples if parsed]
    if not examples:
        pytest.skip(f"{readme.relative_to(REPO)} has no curl examples yet")
    routes = _routes()
    wrong = [
        f"{method} {path}   <- {command}" for command, (method, path) in examples
        if not any(pattern.fullmatch(path) and method in methods for pattern, methods in routes)
    ]
    assert not wrong, f"{readme.name}: curl examples for routes the API does not have:\n" + "\n".join(wrong)


def test_an_example_for_a_missing_route_would_be_reported() -> None:
    if importlib.util.find_spec("service.app") is None:
        pytest.skip("service.app does not exist yet")
    routes = _routes()
    for method, path in (("GET", "/v1/no-such-route"), ("DELETE", "/healthz")):
        assert not any(pattern.fullmatch(path) and method in methods for pattern, methods in routes)
    assert any(pattern.fullmatch("/v1/videos/abc") and "GET" in methods for pattern, methods in routes)
