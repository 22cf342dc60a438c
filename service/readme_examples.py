"""Generate (or check) the example requests and answers of the README from the service itself.

    python -m service.readme_examples            # rewrite the README's example blocks
    python -m service.readme_examples --check    # exit 1 when the README differs from the live answers

Each example is a block of README.md between ``<!-- example:NAME -->`` and ``<!-- /example -->``: a
``bash`` block with the commands (the ``curl`` lines are written from the requests below, so command and
answer cannot drift apart) and a ``json`` block with one answer per request. The answers come from the
app itself, in process (its lifespan, ONNX Runtime session and Redis as ``trdetr-serve`` runs them), on
the default bundle unless ``--bundle`` says otherwise, after storing the README's example video: the
features that the README's ``python3 -c`` line writes (seeded, so the same everywhere), made by running
that very line.

``--check`` compares with a tolerance: numbers within ``REL_TOL`` / ``ABS_TOL`` (ONNX Runtime's fp32
kernels may differ in the last digits between CPUs), strings, keys and list lengths exactly, and the
clock-dependent fields (``VOLATILE``: ``expires_at``, ``ttl_s``) only by type.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import re
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis

from service.app import create_app
from service.settings import DEFAULT_BUNDLE_DIR, Settings

README = Path(__file__).resolve().parents[1] / "README.md"
BASE = "localhost:8000"
VIDEO_ID = "demo"
NPZ_FILE = "demo.npz"
# the README's command writing the example video: 30 clips of seeded random slowfast + clip features
MAKE_NPZ = (
    "import numpy as np; r = np.random.default_rng(0); np.savez('demo.npz', "
    "slowfast=r.standard_normal((30, 2304), 'float32'), clip=r.standard_normal((30, 512), 'float32'))"
)
QUERY = "a man plays the guitar"
REL_TOL, ABS_TOL = 1e-4, 1e-6
VOLATILE = frozenset({"expires_at", "ttl_s"})
BLOCK = re.compile(r"(<!-- example:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /example -->)", re.DOTALL)
ELLIPSIS = "..."


@dataclass(frozen=True)
class Call:
    """One HTTP request of an example: ``json`` is a JSON body, ``npz`` sends the example video file."""

    method: str
    path: str
    json: dict | None = None
    npz: bool = False

    def curl(self) -> str:
        """The README's ``curl`` line for this request."""
        parts = ["curl -s"] + ([f"-X {self.method}"] if self.method not in ("GET", "POST") else [])
        parts.append(f"{BASE}{self.path}")
        if self.npz:
            parts.append(f"-H 'Content-Type: application/x-npz' --data-binary @{NPZ_FILE}")
        elif self.json is not None:
            if self.method != "POST":
                raise ValueError("a JSON body is only written for POST examples")
            parts[0] = "curl -s -X POST"
            parts.append(f"-H 'Content-Type: application/json' -d '{json.dumps(self.json)}'")
        return " ".join(parts)


def _short_clips(answer: dict) -> dict:
    """The highlights answer with each result's per-clip list cut to its first two entries + ``"..."``."""
    results = [
        {**r, "clips": [*r["clips"][:2], ELLIPSIS]} if len(r["clips"]) > 2 else r for r in answer["results"]
    ]
    return {**answer, "results": results}


@dataclass(frozen=True)
class Example:
    """A README example block: shell lines before the requests, the requests, how each answer is shown."""

    name: str
    calls: list[Call]
    shell: list[str] = field(default_factory=list)
    shorten: Callable[[dict], dict] | None = None


EXAMPLES = [
    Example(
        "store",
        [Call("PUT", f"/v1/videos/{VIDEO_ID}/features", npz=True)],
        shell=[f'python3 -c "{MAKE_NPZ}"'],
    ),
    Example(
        "moments",
        [
            Call("GET", f"/v1/videos/{VIDEO_ID}"),
            Call("POST", "/v1/moments", json={"video_id": VIDEO_ID, "queries": [QUERY], "top_k": 3}),
        ],
    ),
    Example(
        "highlights",
        [Call("POST", "/v1/highlights", json={"video_id": VIDEO_ID, "queries": [QUERY], "top_k": 2})],
        shorten=_short_clips,
    ),
    Example("delete", [Call("DELETE", f"/v1/videos/{VIDEO_ID}"), Call("GET", f"/v1/videos/{VIDEO_ID}")]),
]


class ReadmeError(RuntimeError):
    """The README lacks an example block, or its json block cannot be read."""


def example_npz() -> bytes:
    """The bytes of ``demo.npz`` written by running the README's ``python3 -c`` line in a temporary directory."""
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-c", MAKE_NPZ], cwd=tmp, check=True, timeout=120)
        return (Path(tmp) / NPZ_FILE).read_bytes()


async def live_answers(settings: Settings) -> dict[str, list[str]]:
    """Run every example against a fresh app on ``settings``; returns name -> the answers' JSON lines.

    The app's lifespan runs here (bundle, Redis, warm-up), as under ``trdetr-serve``; requests go
    through httpx's ASGI transport. Calls are made in README order (store, read, search, delete).
    """
    npz = example_npz()
    app = create_app(settings)
    answers: dict[str, list[str]] = {}
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://service", timeout=120) as client:
            for example in EXAMPLES:
                answers[example.name] = [
                    await _answer(client, call, example.shorten, npz) for call in example.calls
                ]
    return answers


async def _answer(
    client: httpx.AsyncClient, call: Call, shorten: Callable[[dict], dict] | None, npz: bytes
) -> str:
    """One request's answer as shown in the README: the body as sent, or its shortened compact JSON."""
    if call.npz:
        response = await client.request(
            call.method, call.path, content=npz, headers={"Content-Type": "application/x-npz"}
        )
    else:
        response = await client.request(call.method, call.path, json=call.json)
    if shorten is None:
        return response.text
    return json.dumps(shorten(response.json()), separators=(",", ":"), ensure_ascii=False)


def render(example: Example, answers: list[str]) -> str:
    """The text between an example's markers."""
    commands = [*example.shell, *(call.curl() for call in example.calls)]
    return "```bash\n" + "\n".join(commands) + "\n```\n```json\n" + "\n".join(answers) + "\n```\n"


def rewrite(readme: str, answers: dict[str, list[str]]) -> str:
    """``readme`` with every example block replaced by the commands and ``answers``."""
    _require_blocks(readme)
    by_name = {example.name: example for example in EXAMPLES}

    def replace(match: re.Match[str]) -> str:
        name = match["name"]
        if name not in by_name:
            return match[0]
        return match[1] + render(by_name[name], answers[name]) + match[4]

    return BLOCK.sub(replace, readme)


def check(readme: str, answers: dict[str, list[str]]) -> list[str]:
    """What differs between the README's example blocks and ``answers``; empty when they agree."""
    blocks = _require_blocks(readme)
    problems = []
    for example in EXAMPLES:
        body = blocks[example.name]
        commands, shown = _split(body, example.name)
        expected_commands = [*example.shell, *(call.curl() for call in example.calls)]
        if commands != expected_commands:
            problems.append(
                f"example {example.name}: the commands are {commands}, expected {expected_commands}"
            )
        if len(shown) != len(answers[example.name]):
            problems.append(
                f"example {example.name}: {len(shown)} answers shown, {len(answers[example.name])} made"
            )
            continue
        for index, (text, live) in enumerate(zip(shown, answers[example.name], strict=True)):
            try:
                documented = json.loads(text)
            except json.JSONDecodeError as error:
                problems.append(f"example {example.name}: answer {index} is not JSON ({error})")
                continue
            problems += [
                f"example {example.name}, answer {index}: {d}"
                for d in differences(documented, json.loads(live))
            ]
    return problems


def differences(documented: Any, live: Any, where: str = "$") -> list[str]:
    """Where two JSON values differ (numbers within REL_TOL/ABS_TOL; VOLATILE keys by type only)."""
    if isinstance(documented, dict) and isinstance(live, dict):
        if set(documented) != set(live):
            return [f"{where}: keys {sorted(documented)} in the README, {sorted(live)} answered"]
        found = []
        for key in documented:
            if key in VOLATILE:
                if type(documented[key]) is not type(live[key]):
                    found.append(f"{where}.{key}: {documented[key]!r} in the README, {live[key]!r} answered")
                continue
            found += differences(documented[key], live[key], f"{where}.{key}")
        return found
    if isinstance(documented, list) and isinstance(live, list):
        if len(documented) != len(live):
            return [f"{where}: {len(documented)} items in the README, {len(live)} answered"]
        return [
            d
            for i, (a, b) in enumerate(zip(documented, live, strict=True))
            for d in differences(a, b, f"{where}[{i}]")
        ]
    if _is_number(documented) and _is_number(live):
        if math.isclose(documented, live, rel_tol=REL_TOL, abs_tol=ABS_TOL):
            return []
    elif documented == live and type(documented) is type(live):
        return []
    return [f"{where}: {documented!r} in the README, {live!r} answered"]


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _require_blocks(readme: str) -> dict[str, str]:
    """name -> body of each example block; every example must have exactly one."""
    blocks: dict[str, list[str]] = {}
    for match in BLOCK.finditer(readme):
        blocks.setdefault(match["name"], []).append(match["body"])
    for example in EXAMPLES:
        count = len(blocks.get(example.name, []))
        if count != 1:
            raise ReadmeError(
                f"README needs exactly one block '<!-- example:{example.name} -->' ... "
                f"'<!-- /example -->' (found {count}): add the markers where that example goes"
            )
    return {name: bodies[0] for name, bodies in blocks.items()}


def _split(body: str, name: str) -> tuple[list[str], list[str]]:
    """(command lines of the bash block, answer lines of the json block) of one example block."""
    match = re.fullmatch(r"```bash\n(?P<bash>.*?)\n```\n```json\n(?P<json>.*?)\n```\n", body, re.DOTALL)
    if match is None:
        raise ReadmeError(f"example {name}: write a ```bash block then a ```json block between the markers")
    return match["bash"].splitlines(), match["json"].splitlines()


def _settings(args: argparse.Namespace, prefix: str) -> Settings:
    """The service's settings for the examples: the bundle, Redis (URL or embedded), a key prefix of this run."""
    return Settings(
        bundle_dir=args.bundle, redis_url=args.redis_url, redis_key_prefix=prefix, device="cpu", warmup_runs=1
    )


def _delete_keys(url: str | None, prefix: str) -> None:
    """Remove this run's keys from a shared Redis (an embedded one goes away by itself)."""
    if url is None:
        return
    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=500))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m service.readme_examples", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--check", action="store_true", help="compare instead of rewriting; exit 1 on a difference"
    )
    parser.add_argument("--readme", type=Path, default=README, help=f"the README (default {README})")
    parser.add_argument(
        "--bundle", type=Path, default=DEFAULT_BUNDLE_DIR, help="bundle (default: the default bundle)"
    )
    parser.add_argument(
        "--redis-url",
        default=None,
        help="Redis to store the example video in (default: an embedded one); its keys are removed",
    )
    args = parser.parse_args(argv)
    prefix = f"readme-examples-{uuid.uuid4().hex[:10]}"
    readme = args.readme.read_text()
    try:
        _require_blocks(readme)
        answers = asyncio.run(live_answers(_settings(args, prefix)))
    except ReadmeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    finally:
        _delete_keys(args.redis_url, prefix)
    if args.check:
        problems = check(readme, answers)
        for problem in problems:
            print(problem, file=sys.stderr)
        if problems:
            print(
                f"{args.readme}: examples differ from the live answers; run python -m service.readme_examples",
                file=sys.stderr,
            )
        return 1 if problems else 0
    updated = rewrite(readme, answers)
    if updated != readme:
        args.readme.write_text(updated)
    print(
        f"{args.readme}: {len(EXAMPLES)} example blocks {'updated' if updated != readme else 'already current'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
