"""The GPU benchmark's report (runs without a GPU): tables and the targets verdicts from a results dict."""

from __future__ import annotations

from blossom_hf.benchmarks import gpu


def _ok(ms: float, mib: float = 700.0) -> dict:
    return {"status": "ok", "ms": ms, "peak_mib": mib, "ms_min": ms, "ms_max": ms, "steps": 10}


def test_markdown_tables_and_target_verdicts():
    env = {"date_utc": "2026-12-01", "gpu": "GPU", "sms": 1, "torch": "t", "cuda": "c", "triton": "x",
           "transformers": "y", "python": "3", "command": "python -m blossom_hf.benchmarks.gpu"}
    results = {
        "env": env,
        "layer": {"blossom/triton bf16": {"200": _ok(6.0), "8192": _ok(11.0, 1000)},
                  "full/sdpa bf16 (flash)": {"200": _ok(5.0, 600), "8192": _ok(20.0, 600)},
                  "full/flex bf16": {"200": {"status": "failed", "error": "x"}, "8192": _ok(19.0, 650)}},
        "ops": {}, "model": {"blossom/triton": {"1024": _ok(40.0)}, "full/sdpa (flash)": {"1024": _ok(42.0)}},
        "inference": {"blossom/triton fp32": {"200": _ok(9.0)}, "full/sdpa fp32 (math kernel, GQA)": {"200": _ok(6.0)}},
        "skipped": ["model full/flex L=1024"],
    }
    text = gpu.markdown(results)
    assert "| 200 (1310) | 6.00 / 700 | 5.00 / 600 | failed |" in text
    lines = {tuple(c.strip() for c in row.split("|")[1:3]): row for row in text.splitlines() if row.startswith("| ")}
    assert "met (0.96 of the bound)" in lines[("layer fwd+bwd bf16", "200")]  # 6 / 5 = 1.2 <= 1.25
    assert "missed by 16%" in lines[("layer fwd+bwd bf16", "8192")]  # 11 / 19 = 0.58 > 0.5
    assert "missed by 11%" in lines[("layer peak memory", "8192")]  # 1000 / 600 = 1.67 > 1.5
    assert "met" in lines[("model training step", "1024")]
    assert "missed by 20%" in lines[("inference fwd fp32", "200")]  # 9 / 6 = 1.5 > 1.25
    assert text.rstrip().endswith("Not run (time budget): model full/flex L=1024")


def test_the_report_says_when_rows_were_interleaved():
    env = {"date_utc": "d", "gpu": "GPU", "sms": 1, "torch": "t", "cuda": "c", "triton": "x", "transformers": "y",
           "python": "3", "command": "c"}
    plain = {"env": env, "layer": {"full/sdpa bf16 (flash)": {"200": _ok(5.0)}}, "ops": {}, "model": {},
             "inference": {}, "skipped": []}
    assert "interleaved" not in gpu.markdown(plain)
    plain["layer"]["full/sdpa bf16 (flash)"]["200"]["rounds"] = 3
    assert "timed side by side in 3 interleaved rounds" in gpu.markdown(plain)
