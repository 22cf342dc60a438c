"""The READMEs document every setting (main README) and every metric the service exports (service/README),
and the main README's example answers are what the default bundle answers (service/readme_examples.py)."""

from __future__ import annotations

import re

import pytest
from redis_fixtures import key_namespace
from svc_helpers import DEFAULT_BUNDLE, REPO

from service import readme_examples
from service.metrics import Metrics
from service.readme_examples import ReadmeError, check, live_answers, rewrite
from service.settings import Settings

README = (REPO / "service" / "README.md").read_text()
MAIN_README = (REPO / "README.md").read_text()


def test_every_setting_is_in_the_configuration_table():
    for name in Settings.model_fields:
        env = "REDIS_URL" if name == "redis_url" else f"TRDETR_{name.upper()}"
        assert f"| `{env}` |" in MAIN_README, f"{env} is missing from the configuration table in README.md"


def test_every_metric_is_documented():
    for metric in Metrics().registry.collect():
        exported = f"{metric.name}_total" if metric.type == "counter" else metric.name
        assert f"`{exported}`" in README, f"{exported} is missing from service/README.md"


@pytest.fixture(scope="module")
async def readme_answers(redis_url):
    """The README's example requests, answered by a fresh app on the default bundle (one run per module)."""
    with key_namespace(redis_url, "trdetr-readme") as prefix:
        settings = Settings(
            bundle_dir=DEFAULT_BUNDLE,
            redis_url=redis_url,
            redis_key_prefix=prefix,
            device="cpu",
            warmup_runs=1,
        )
        return await live_answers(settings)


@pytest.mark.anyio
async def test_the_readme_examples_are_what_the_default_bundle_answers(readme_answers):
    """Fails when the bundle or the API changes and the README was not regenerated
    (``python -m service.readme_examples``). Numbers compare within REL_TOL=1e-4 / ABS_TOL=1e-6: ONNX
    Runtime's CPU kernels may differ in the last digits from one CPU to another; expires_at and ttl_s
    depend on the clock and compare by type only."""
    assert check(MAIN_README, readme_answers) == []


@pytest.mark.anyio
async def test_a_stale_score_command_or_field_is_reported(readme_answers):
    score = re.search(r'"score":(0\.\d+)', MAIN_README)[1]
    assert check(MAIN_README.replace(score, f"{float(score) + 0.01!r}", 1), readme_answers)
    assert not check(MAIN_README.replace(score, f"{float(score) * (1 + 1e-6)!r}", 1), readme_answers)
    assert check(MAIN_README.replace('"top_k": 3', '"top_k": 4', 1), readme_answers)  # the curl line
    assert check(MAIN_README.replace('"deleted":true', '"deleted":false', 1), readme_answers)
    with pytest.raises(ReadmeError, match="example:highlights"):
        check(MAIN_README.replace("<!-- example:highlights -->", "", 1), readme_answers)


@pytest.mark.anyio
async def test_rewriting_a_stale_readme_restores_the_live_answers(readme_answers):
    stale = MAIN_README.replace('"num_clips":30', '"num_clips":31')
    assert check(stale, readme_answers)
    assert check(rewrite(stale, readme_answers), readme_answers) == []


def test_the_check_command_exits_1_on_a_stale_readme(tmp_path, redis_url, capsys):
    readme = tmp_path / "README.md"
    readme.write_text(MAIN_README.replace('"deleted":true', '"deleted":false'))
    assert readme_examples.main(["--check", "--readme", str(readme), "--redis-url", redis_url]) == 1
    assert "answer 0: $.deleted: False in the README, True answered" in capsys.readouterr().err
