"""benchmarks/omp_wait.py: each worker's libgomp variables, and the medians it reports (no timing here)."""
import importlib.util
from pathlib import Path

import pytest

OMP_WAIT = Path(__file__).resolve().parents[1] / "benchmarks" / "omp_wait.py"


@pytest.fixture(scope="module")
def omp_wait():
    spec = importlib.util.spec_from_file_location("kdapp_omp_wait_bench", OMP_WAIT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # stdlib only at import: torch loads in the workers
    return module


def test_each_policy_sets_its_own_variables_whatever_the_parent_had(omp_wait):
    parent = {"OMP_WAIT_POLICY": "ACTIVE", "GOMP_SPINCOUNT": "7", "PATH": "/bin"}
    passive = omp_wait.policy_env(omp_wait.PASSIVE, parent)
    assert passive["OMP_WAIT_POLICY"] == "PASSIVE" and "GOMP_SPINCOUNT" not in passive and passive["PATH"] == "/bin"
    spin = omp_wait.policy_env("GOMP_SPINCOUNT=300000", parent)
    assert spin["OMP_WAIT_POLICY"] == "PASSIVE" and spin["GOMP_SPINCOUNT"] == "300000"
    active = omp_wait.policy_env("ACTIVE", {"PATH": "/bin"})
    assert active["OMP_WAIT_POLICY"] == "ACTIVE" and "GOMP_SPINCOUNT" not in active
    assert parent == {"OMP_WAIT_POLICY": "ACTIVE", "GOMP_SPINCOUNT": "7", "PATH": "/bin"}  # not changed


def test_summary_takes_medians_and_compares_each_with_passive(omp_wait):
    results = {"idle": {omp_wait.PASSIVE: [0.40, 0.36, 0.37], "ACTIVE": [0.30, 0.32, 0.37]},
               "busy": {omp_wait.PASSIVE: [0.60, 0.61, 0.50], "ACTIVE": [0.90, 1.2, 0.8]}}
    medians = omp_wait.summary(results)
    assert medians["idle"][omp_wait.PASSIVE] == {"s_per_step": 0.37, "speedup_vs_passive": 1.0}
    assert medians["idle"]["ACTIVE"]["speedup_vs_passive"] == pytest.approx(0.37 / 0.32, abs=1e-3)
    assert medians["busy"]["ACTIVE"] == {"s_per_step": 0.9, "speedup_vs_passive": pytest.approx(0.6 / 0.9, abs=1e-3)}
