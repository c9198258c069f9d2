"""`deepinv-mol bench all` and the generated results page: failures recorded, targets judged, valid reST."""

import json

import pytest

from deepinv_mol import cli
from deepinv_mol.bench import report
from deepinv_mol.bench.report import (
    README_BEGIN,
    README_END,
    evaluate_targets,
    render_page,
    run_all,
    run_benchmark,
    write_json,
    write_page,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _rst_problems(text):
    """docutils messages of level >= 2 (warnings, errors) when parsing the page."""
    docutils_core = pytest.importorskip("docutils.core")
    doctree = docutils_core.publish_doctree(text, settings_overrides={"report_level": 5, "halt_level": 5,
                                                                      "warning_stream": False})
    return [m.astext() for m in doctree.findall() if m.tagname == "system_message" and m["level"] >= 2]


ROBUST_ROWS = [
    {"task": "mri-radial-4x", "model": "mol-strict", "budget": 0.01, "image_size": 64, "n_images": 1,
     "worst_case": 0.3, "random_mean": 0.1, "worst_to_random": 3.0, "certified_bound": 3.0,
     "within_certificate": True, "ratio_to_modl": 0.4, "worst_case_per_image": [0.3],
     "slack": {"total": 10.0, "network": 2.0, "alignment": 2.5, "balance": 2.0, "m_eff": 0.04, "margin": 0.01,
               "t": 0.2, "closure": 1.0, "sqrt_bound": 3.0}},
    {"task": "mri-radial-4x", "model": "modl", "budget": 0.01, "image_size": 64, "n_images": 1,
     "worst_case": 0.75, "random_mean": 0.2, "worst_to_random": 3.7, "certified_bound": None,
     "within_certificate": None, "ratio_to_modl": 1.0, "slack": None},
]
CONV_ROWS = [{"task": "ct-sparse-view", "model": "mol-strict", "image_size": 64, "n_images": 2,
              "iterations_anderson": 10.0, "iterations_authors": 20.0, "speedup_vs_authors": 2.0,
              "converged_share": 1.0, "uniqueness_spread": 1e-5}]
MEMORY_ROWS = [{"model": "MOL", "img_size": 256, "peak_rss_increase": 1e8},
               {"model": "MoDL", "img_size": 256, "peak_rss_increase": 9e8},
               {"model": "ratio MoDL/MOL", "img_size": 256, "num_iter": 10, "peak_rss_increase": 9.0}]
LUSER_ROWS = [{"problem": p, "model": "ratio twin/LUSER", "img_size": 256, "peak_rss_increase": v}
              for p, v in (("deblur", 6.5), ("ct", 5.0))]


def test_targets_met_and_not_met():
    payloads = [{"benchmark": "robustness", "rows": ROBUST_ROWS}, {"benchmark": "convergence", "rows": CONV_ROWS},
                {"benchmark": "memory", "rows": MEMORY_ROWS}, {"benchmark": "luser", "rows": LUSER_ROWS},
                {"benchmark": "speed", "rows": [{"model": "cg", "seconds": 1.0}]}]
    status = {(t["benchmark"], t["target"]): t["status"] for t in evaluate_targets(payloads)}
    assert status[("robustness", "MOL-strict/MoDL <= 0.5")] == "met"  # 0.4
    assert status[("robustness", "worst case <= bound")] == "met"
    assert status[("convergence", ">= 3x fewer iterations")] == "not met"  # 2.0
    assert status[("convergence", "100 %")] == "met"
    assert status[("convergence", "<= 1e-3")] == "met"
    assert status[("memory", "MoDL/MOL peak >= 8x")] == "met"  # 9.0
    assert status[("luser", "twin/LUSER peak >= 6x")] == "not met"  # the worst problem, 5.0, counts
    # rows without the figure: "not measured", never a guess
    missing = evaluate_targets([{"benchmark": "memory", "rows": [{"model": "MOL"}]}])
    assert [t["status"] for t in missing] == ["not measured"]


def _fixture_folder(tmp_path):
    out = tmp_path / "run"
    write_json(out / "robustness.json", "robustness", {"image_size": 64}, ROBUST_ROWS)
    write_json(out / "convergence.json", "convergence", {"image_size": 64}, CONV_ROWS)
    write_json(out / "robustness-128.json", "robustness", {"image_size": 128}, ROBUST_ROWS)  # a larger run added
    (out / "robustness.png").write_bytes(b"\x89PNG fake")
    summary = {"preset": "quick", "command": "deepinv-mol bench all --out run", "machine": report.machine(),
               "started": "2026-01-01 00:00 UTC", "seconds": 60.0,
               "runs": [{"name": "robustness", "status": "ok", "seconds": 30.0, "kwargs": {"image_size": 64},
                         "json": "robustness.json", "error": None},
                        {"name": "convergence", "status": "ok", "seconds": 20.0, "kwargs": {}, "json": "convergence.json",
                         "error": None},
                        {"name": "memory", "status": "failed", "seconds": 1.0, "kwargs": {}, "json": None,
                         "error": "RuntimeError: out of memory | *boom*"}]}
    (out / "summary.json").write_text(json.dumps(summary))
    return out


def test_page_is_valid_rest_with_machine_targets_figures_and_failures(tmp_path):
    out = _fixture_folder(tmp_path)
    page = tmp_path / "docs" / "benchmarks.rst"
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{README_BEGIN}\nold table\n{README_END}\n\nrest\n")
    write_page(out, page, readme_path=readme)
    text = page.read_text()
    assert _rst_problems(text) == []
    info = report.machine()
    for needle in ("Machine", info["cpu"], f"{info['ram_gib']} GiB", f"torch {info['torch']}",
                   f"deepinv {info['deepinv']}", "2026-01-01 00:00 UTC", "Targets", "NOT met", "Failures",
                   "``memory``: failed", ".. image:: benchmarks/robustness.png"):
        assert needle in text, needle
    assert text.count("What the certificate says") == 1  # the explanation once, the numbers per run
    assert text.count("MOL-strict's worst case 0.3, MoDL's 0.75 (ratio 0.4, target <= 0.5)") == 2
    assert "robustness-128.json" in text
    assert (tmp_path / "docs" / "benchmarks" / "robustness.png").exists()  # the figure travels with the page
    # the README block is replaced, the rest kept
    new = readme.read_text()
    assert "old table" not in new and new.startswith("# x\n") and new.endswith(f"{README_END}\n\nrest\n")
    assert "| MOL-strict more robust than MoDL (worst-case amplification) | MOL-strict/MoDL <= 0.5 |" in new
    assert "`memory`" in new  # failed benchmarks are named
    assert "relative to \\|\\|x\\|\\| | <= 1e-3 |" in new  # "|" escaped inside Markdown cells
    # without markers: refused, file untouched
    plain = tmp_path / "PLAIN.md"
    plain.write_text("no markers\n")
    with pytest.raises(ValueError, match="no <!-- bench-table -->"):
        write_page(out, page, readme_path=plain)
    assert plain.read_text() == "no markers\n"


def test_rest_escaping_of_values(tmp_path):
    out = tmp_path / "run"
    write_json(out / "x.json", "weird", {"a": "||x||_2"}, [{"name": "a|b*c_", "value": float("nan")}])
    text = render_page(out, out / "benchmarks.rst")
    assert _rst_problems(text) == []
    assert "a\\|b\\*c\\_" in text


def _good(n_images: int = 1):
    return [{"model": "m", "ratio_x": 2.0 * n_images}]


def _bad(n_images: int = 1):
    raise RuntimeError("out of memory")


def test_run_all_records_failures_and_goes_on(tmp_path):
    table = {"good": _good, "bad": _bad, "missing": None, "later": _good}
    summary = run_all(tmp_path, table, preset="quick", overrides={"good": {"n_images": 3, "steps": 9}}, log=None)
    status = {r["name"]: r["status"] for r in summary["runs"]}
    assert status == {"good": "ok", "bad": "failed", "missing": "unavailable", "later": "ok"}
    good = summary["runs"][0]
    assert good["kwargs"] == {"n_images": 3} and good["ignored"] == ["steps"]
    payload = json.loads((tmp_path / "good.json").read_text())
    assert payload["benchmark"] == "good" and payload["rows"] == [{"model": "m", "ratio_x": 6.0}]
    assert (tmp_path / "good.png").exists() and not (tmp_path / "bad.json").exists()
    assert summary["runs"][1]["error"] == "RuntimeError: out of memory"
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert [r["status"] for r in on_disk["runs"]] == ["ok", "failed", "unavailable", "ok"]
    with pytest.raises(ValueError, match="unknown benchmark"):
        run_all(tmp_path, table, only=["nope"], log=None)
    with pytest.raises(ValueError, match="preset must be one of"):
        run_all(tmp_path, table, preset="huge", log=None)
    with pytest.raises(ValueError, match="jobs must be"):
        run_all(tmp_path, table, jobs=0, log=None)


def test_run_all_side_by_side_gives_the_same_records_in_the_table_order(tmp_path):
    # two spawned workers: the files and records of a sequential run, the summary in the order of the table
    table = {"good": _good, "bad": _bad, "missing": None, "later": _good}
    lines = []
    summary = run_all(tmp_path, table, preset="quick", overrides={"good": {"n_images": 3}}, log=lines.append, jobs=2)
    assert summary["jobs"] == 2
    assert [(r["name"], r["status"]) for r in summary["runs"]] == [
        ("good", "ok"), ("bad", "failed"), ("missing", "unavailable"), ("later", "ok")]
    assert summary["runs"][1]["error"] == "RuntimeError: out of memory"
    assert json.loads((tmp_path / "good.json").read_text())["rows"] == [{"model": "m", "ratio_x": 6.0}]
    assert (tmp_path / "later.png").exists() and not (tmp_path / "bad.json").exists()
    assert sum("queued" in line for line in lines) == 4 and sum(": ok in" in line for line in lines) == 2
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert [r["name"] for r in on_disk["runs"]] == list(table)


def test_presets_name_only_benchmarks_of_the_cli_table():
    for preset in report.PRESETS.values():
        assert set(preset) <= set(cli.BENCHMARKS)


def test_cli_bench_all_tiny_with_a_failing_benchmark(tmp_path, monkeypatch, capsys):
    from deepinv_mol.bench.robustness import bench_robustness

    def tiny_robustness(json_path=None, figure_path=None, progress=False):
        return bench_robustness(tasks=("mri-radial-4x",), models=("mol-strict", "cg"), n_images=1, image_size=16,
                                budgets=(0.05,), steps=1, n_random=1, json_path=json_path,
                                figure_path=figure_path, progress=progress)

    functions = {"robustness": tiny_robustness, "broken": _bad}
    monkeypatch.setattr(cli, "BENCHMARKS", {"robustness": ("robustness", "x"), "broken": ("report", "y")})
    monkeypatch.setattr(cli, "_bench_function", lambda name: functions[name])
    readme = tmp_path / "README.md"
    readme.write_text(f"{README_BEGIN}\n{README_END}\n")
    out, page = tmp_path / "out", tmp_path / "docs" / "benchmarks.rst"
    # --jobs 1: the test's benchmark is a closure, which a spawned worker cannot import
    assert cli.main(["bench", "all", "--out", str(out), "--preset", "quick", "--page", str(page),
                     "--readme", str(readme), "--jobs", "1"]) == 0
    printed = capsys.readouterr().out
    assert "1 of 2 benchmarks ran" in printed and "not measured: broken" in printed
    text = page.read_text()
    assert _rst_problems(text) == []
    assert "``broken``: failed (RuntimeError: out of memory)" in text
    assert "MOL-strict never above its certified bound" in text
    rows = json.loads((out / "robustness.json").read_text())["rows"]
    assert {r["model"] for r in rows} == {"mol-strict", "cg"}
    # the page alone is regenerated from the same files
    page.unlink()
    assert cli.main(["bench", "all", "--out", str(out), "--page", str(page), "--page-only"]) == 0
    assert page.read_text() == text


def test_cli_bench_all_bad_input(tmp_path, capsys):
    assert cli.main(["bench", "all"]) == 2
    assert "bench all needs --out DIR" in capsys.readouterr().err
    assert cli.main(["bench", "all", "--out", str(tmp_path), "--only", "memory,nope"]) == 2
    assert "--only: unknown benchmark(s) nope" in capsys.readouterr().err
    assert cli.main(["bench", "all", "--out", str(tmp_path), "--image-size", "32"]) == 2
    assert "bench all takes no --image-size" in capsys.readouterr().err
    assert cli.main(["bench", "robustness", "--out", str(tmp_path)]) == 2
    assert "--out is an option of bench all only" in capsys.readouterr().err
    assert cli.main(["bench", "all", "--out", str(tmp_path / "empty"), "--page-only"]) == 2
    assert "run bench all --out" in capsys.readouterr().err


def test_run_benchmark_of_a_rows_only_function_writes_its_json(tmp_path):
    record = run_benchmark("good", _good, tmp_path, {"n_images": 2})
    assert record["status"] == "ok" and record["json"] == "good.json" and record["figure"] == "good.png"
    payload = json.loads((tmp_path / "good.json").read_text())
    assert set(payload) >= {"benchmark", "settings", "machine", "rows"} and payload["settings"] == {"n_images": 2}


def test_memory_flat_target_judges_growth_from_k10_to_k50():
    from deepinv_mol.bench.report import _memory_flat

    def rows(mol50, luser50):
        return [{"model": "MOL", "num_iter": 10, "peak_rss_increase": 100, "image_size": 64},
                {"model": "MOL", "num_iter": 50, "peak_rss_increase": mol50, "image_size": 64},
                {"model": "LUSER", "num_iter": 10, "peak_rss_increase": 200, "image_size": 64},
                {"model": "LUSER", "num_iter": 50, "peak_rss_increase": luser50, "image_size": 64},
                {"model": "MoDL", "num_iter": 50, "peak_rss_increase": 5000, "image_size": 64}]

    text, met = _memory_flat(rows(110, 220))
    assert met and "MOL: 1.10x" in text and "LUSER: 1.10x" in text
    assert _memory_flat(rows(110, 240))[1] is False  # LUSER grows 1.2x
    assert _memory_flat([{"model": "MoDL", "num_iter": 10, "peak_rss_increase": 1}]) is None
