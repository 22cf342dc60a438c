"""The READMEs document every setting (main README) and every metric the service exports (service/README)."""

from __future__ import annotations

from svc_helpers import REPO

from service.metrics import Metrics
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
