"""The serving benchmark at its smallest: the interleaved A/B and the soak under hostile clients run and report."""

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _bench():
    """benchmarks/bench_serve.py as a module; Ray ships its classes by value (workers cannot import it)."""
    from ray import cloudpickle

    spec = importlib.util.spec_from_file_location("bench_serve", ROOT / "benchmarks" / "bench_serve.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_serve"] = module
    spec.loader.exec_module(module)
    cloudpickle.register_pickle_by_value(module)
    return module


def test_ab_and_soak_at_minimal_size(ray_local, capsys):
    bench = _bench()
    assert bench.main(["--requests", "2", "--rounds", "2", "--concurrency", "1", "--max-tokens", "2", "--frames", "8"]) == 0
    out = capsys.readouterr().out
    assert "split/single throughput" in out and "(2 requests in 2 rounds" in out
    # Two phases (clean, hostile): every good kind and a share of the hostile cases, one client.
    code = bench.main(["--soak", "--requests", "16", "--phase", "8", "--bad-every", "2", "--concurrency", "2",
                       "--max-tokens", "2", "--frames", "8", "--max-seconds", "600"])
    out = capsys.readouterr().out
    assert "good requests failed: 0 (target 0)" in out, out
    assert "hostile requests with another status than expected: 0" in out, out
    assert "replica memory (peak RSS, MiB)" in out and code == 0, out
