import json
import subprocess
import sys

from tests.conftest import REPO


def test_the_gpu_check_runs_every_step_in_dry_mode(tmp_path):
    """The prepared GPU script, at toy sizes on the CPU: every step runs (the CUDA suite says it
    was skipped) and the results are written, so the script cannot rot between GPU runs."""
    out = tmp_path / "gpu.json"
    done = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--dry-run", "--out", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(out.read_text())
    assert {name: step["status"] for name, step in results["steps"].items()} == dict.fromkeys(
        ("info", "tests", "speed", "suite", "medium"), "ok")
    assert results["speed"]["lstm toy fp32"]["tokens_per_second"] > 0 and results["medium"]["ms_per_token_batch64"] > 0
    assert "| lstm toy fp32 |" in out.with_suffix(".md").read_text()
