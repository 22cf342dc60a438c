"""bench/gpu_check.sh cannot rot: its CPU smoke mode runs every stage (parity, engine modes, torch eager, the live
service) through the same code as on a GPU machine, and the GPU mode refuses clearly when nothing was staged."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from svc_helpers import REPO


def test_cpu_smoke_runs_every_stage_and_prints_one_table(redis_url, tmp_path):
    report = tmp_path / "gpu_check.json"
    env = {**os.environ, "PYTHON": sys.executable, "REDIS_URL": redis_url}
    result = subprocess.run(
        ["bash", "bench/gpu_check.sh", "--cpu-smoke", "--json", str(report)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "| stage | check | measured | goal | status |" in result.stdout
    rows = json.loads(report.read_text())
    assert not [row for row in rows if row["status"] in ("ERROR", "FAIL")], rows
    by_stage = {
        stage: [row for row in rows if row["stage"] == stage] for stage in {row["stage"] for row in rows}
    }
    parity = {row["what"]: row for row in by_stage["parity"]}
    assert any(
        "IOBinding buckets vs CPU EP fp32" in what and row["status"] == "PASS" for what, row in parity.items()
    )
    engine = " ".join(row["what"] for row in by_stage["engine"])
    for mode in (
        "session.run",
        "IOBinding (batch copied in)",
        "IOBinding (device-resident inputs)",
        "CUDA graph asked off CUDA (no-op)",
    ):
        assert mode in engine, mode
    assert len(by_stage["torch eager"]) == 2
    service = {row["what"].split(",")[0]: row["value"] for row in by_stage["service"]}
    assert "io_binding=True" in service["readyz checks"] and "cuda_graph=False" in service["readyz checks"]
    assert service["concurrency 1"].endswith(" ms") and "req/s" in service["max throughput"]
    assert any(what.startswith("80 % of max") for what in service)
    assert all(", 0 failed)" in row["what"] for row in by_stage["service"] if "failed" in row["what"])


def test_gpu_mode_without_the_staged_onnxruntime_gpu_says_what_to_do(tmp_path):
    if (REPO / ".ortgpu" / "base" / "install.sh").exists():
        return  # this checkout has the staged package: the GPU mode would really start
    result = subprocess.run(
        ["bash", "bench/gpu_check.sh"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "prepare.sh" in result.stderr and "README" in result.stderr
