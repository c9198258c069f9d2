r"""Smoke tests of the memory benchmarks against K and against problem size (tiny sizes, saved bytes only)."""

import json

import pytest

from deepinv_mol.bench.memory import bench_memory_vs_iterations, bench_memory_vs_size


def test_memory_vs_iterations_json_shape(tmp_path):
    path, fig = tmp_path / "k.json", tmp_path / "k.png"
    rows = bench_memory_vs_iterations(num_iters=(2, 4), models=("MOL", "MoDL"), image_size=16, width=4, rss=False,
                                      json_path=path, figure_path=fig)
    payload = json.loads(path.read_text())
    assert payload["benchmark"] == "memory-iterations" and payload["settings"]["memory"] == "saved_bytes"
    assert {"cpu", "torch"} <= set(payload["machine"])
    measured = [r for r in payload["rows"] if not r.get("summary")]
    assert [(r["model"], r["num_iter"]) for r in measured] == [("MOL", 2), ("MOL", 4), ("MoDL", 2), ("MoDL", 4)]
    assert all(r["memory"] == r["saved_bytes"] > 0 for r in measured)
    summary = {r["model"]: r for r in payload["rows"] if r.get("summary")}
    assert set(summary) == {"MOL", "MoDL"}
    # the unrolled network keeps one graph per layer: twice the layers, more kept; MOL keeps one step
    assert summary["MoDL"]["growth_10_to_50"] > 1.5 and summary["MOL"]["growth_10_to_50"] < 1.05
    assert fig.stat().st_size > 1000 and rows == payload["rows"]


def test_memory_vs_iterations_bad_model():
    with pytest.raises(ValueError, match="unknown models"):
        bench_memory_vs_iterations(models=("MOL", "UNet"), rss=False)


def test_memory_vs_size_json_shape(tmp_path):
    path, fig = tmp_path / "s.json", tmp_path / "s.png"
    bench_memory_vs_size(geometries=("2d",), ladders={"2d": ((8, 8), (12, 12), (16, 16))}, targets={"2d": (64, 64)},
                         num_iter=2, width=4, depth=2, budgets_gib=(1,), rss=False, json_path=path, figure_path=fig)
    payload = json.loads(path.read_text())
    rows = payload["rows"]
    assert payload["benchmark"] == "memory-size"
    measured = [r for r in rows if r["source"] == "measured"]
    assert [(r["model"], r["voxels"]) for r in measured] == [("MOL", 64), ("MOL", 144), ("MOL", 256),
                                                             ("MoDL", 64), ("MoDL", 144), ("MoDL", 256)]
    fits = [r for r in rows if r.get("kind") == "fit"]
    assert len(fits) == 2 and all(r["mb_per_kvoxel"] > 0 and 0 <= r["fit_max_rel_residual"] < 1 for r in fits)
    targets = [r for r in rows if r.get("kind") == "target"]
    assert all(r["source"] == "extrapolated" and r["voxels"] == 4096 and "fits_1gib" in r for r in targets)
    budgets = [r for r in rows if r.get("kind") == "budget"]
    assert all(len(r["largest_shape"]) == 2 and r["largest_shape"][0] == r["largest_shape"][1] for r in budgets)
    claim = [r for r in rows if r.get("kind") == "claim"]
    assert len(claim) == 1 and set(claim[0]) >= {"mol_fits", "modl_fits", "mol_trains_where_modl_cannot"}
    assert fig.stat().st_size > 1000


def test_memory_vs_size_needs_three_sizes():
    with pytest.raises(ValueError, match="at least 3 shapes"):
        bench_memory_vs_size(geometries=("2d",), ladders={"2d": ((8, 8), (12, 12))}, rss=False)
