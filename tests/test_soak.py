"""scripts/soak.py (dualvec.bench.soak) against a served bundle for about 20 s, with one reload (the served symlink
flipped to another bundle, SIGHUP) and one token rotation: no call fails, GetInfo shows the reload, the old token
is refused after the rotation, and a PNG and JSON come out. The memory trend keeps each served bundle at its own
level (a reload's step is not growth, a leak is), and the server histogram's quantiles interpolate as Prometheus
does."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from access_helpers import FLAT_BUNDLE, serve  # noqa: F401 - serve is a fixture
from dualvec.bench.soak import bucket_quantile, bundle_content_id, memory_trend, share_above
from dualvec.client import pick_free_port
from dualvec.credential_files import read_tokens
import pytest

pytestmark = pytest.mark.slow  # runs a served soak for tens of seconds: .ci/run covers it

ROOT = Path(__file__).resolve().parent.parent
OTHER_BUNDLE = FLAT_BUNDLE.parent / "hnsw"  # the same 40 words, another index: another content_id
TOKEN = "soak-token-St31"


def test_a_short_soak_with_a_reload_and_a_rotation_fails_no_call(serve, tmp_path):
    link = tmp_path / "served"
    os.symlink(FLAT_BUNDLE, link)
    tokens = tmp_path / "tokens"
    tokens.write_text(f"# soak\n{TOKEN}\n")
    tokens.chmod(0o600)
    metrics_port = pick_free_port()
    server = serve("--processes", "2", "--auth-token-file", str(tokens), "--metrics-port", str(metrics_port),
                   bundle=link)
    address = server.address()
    png, out = tmp_path / "soak.png", tmp_path / "soak.json"
    run = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "soak.py"), address, "--minutes", "0.33", "--warmup", "4",
         "--interval", "1", "--reload-every", "0.2", "--rotate-at", "0.1", "--rate", "40", "--server-pid",
         str(server.proc.pid), "--bundles", str(FLAT_BUNDLE), str(OTHER_BUNDLE), "--served-link", str(link),
         "--token-file", str(tokens), "--metrics-url", server.metrics_url(), "--png", str(png), "--json", str(out)],
        capture_output=True, text=True, timeout=180, cwd=ROOT)
    print(run.stdout)
    assert run.returncode == 0, run.stdout + run.stderr
    result = json.loads(out.read_text())
    s = result["summary"]
    assert s["calls"]["failed"] == 0 and s["calls"]["unfinished"] == 0, s["calls"]
    assert s["calls"]["total"] > 500
    assert set(s["calls"]["by_rpc"]) >= {"Search", "BatchSearch", "ScoreDocuments", "GetVectors", "SearchStream"}
    assert s["verdict"]["zero_failed_calls"] and s["verdict"]["reloads_seen"] == "1 of 1"
    reload = next(e for e in result["events"] if e["event"] == "reload")
    assert reload["seen"] and reload["content_id"] == bundle_content_id(str(OTHER_BUNDLE))
    assert os.path.realpath(link) == os.path.realpath(OTHER_BUNDLE)
    assert [r["bundle"] for r in result["intervals"] if r.get("bundle")][-1] == "B"
    rotation = next(e for e in result["events"] if e["event"] == "rotate")
    assert rotation["done"] and rotation["at_s"] < reload["at_s"]
    assert read_tokens(tokens) != [TOKEN] and len(read_tokens(tokens)) == 1
    assert oct(tokens.stat().st_mode & 0o777) == "0o600"
    rows = result["intervals"]
    assert len(rows) >= 19 and all(r["pss_mib"] for r in rows[1:])
    assert s["memory"]["measure"] == "PSS" and s["memory"]["processes"] == 3
    assert "server_search_ms" in s["tail"] and s["tail"]["server_search_calls"] > 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "verdict: zero failed calls: yes; reloads seen: 1 of 1; token rotation: done" in run.stdout
    server.wait_for(r"bundle 'served' reloaded from", count=2)
    assert server.stop() == 0


def test_memory_trend_tells_a_reload_step_from_growth():
    t = np.arange(0.0, 600.0, 5.0)
    events = [{"event": "reload", "at_s": 200.0, "to": "B", "seen_by_all_after_s": 1.0},
              {"event": "reload", "at_s": 400.0, "to": "A", "seen_by_all_after_s": 1.0}]

    def label(x):
        return "first" if x < 200 else "B" if x < 400 else "A"

    level = np.array([300.0 if x < 200 else 340.0 if x < 400 else 320.0 for x in t])
    noise = np.random.default_rng(0).normal(0, 0.3, len(t))
    flat = memory_trend(list(t), list(level + noise), 30.0, events, 15.0, label)
    assert flat["trend"] == "flat" and abs(flat["slope_mib_per_min"]) < 0.2, flat
    assert abs(flat["plain_slope_mib_per_min"]) > 1  # a plain fit takes the steps for a trend
    leak = memory_trend(list(t), list(level + noise + t / 60.0 * 3.0), 30.0, events, 15.0, label)
    assert leak["trend"] == "growing" and abs(leak["slope_mib_per_min"] - 3.0) < 0.2, leak
    assert [p["bundle"] for p in leak["periods"]] == ["first", "B", "A"]
    shrink = memory_trend(list(t), list(level + noise - t / 60.0 * 3.0), 30.0, events, 15.0, label)
    assert shrink["trend"] == "falling" and not shrink["flat"], shrink


def test_server_histogram_quantiles_interpolate_within_buckets():
    cum = [(0.001, 50.0), (0.002, 90.0), (0.005, 99.0), (0.01, 100.0), (float("inf"), 100.0)]
    assert abs(bucket_quantile(cum, 0.5) - 0.001) < 1e-12
    assert abs(bucket_quantile(cum, 0.7) - 0.0015) < 1e-12
    assert abs(bucket_quantile(cum, 0.995) - 0.0075) < 1e-12
    assert abs(share_above(cum, 0.002) - 0.1) < 1e-12 and share_above(cum, 0.01) == 0.0
    assert bucket_quantile([], 0.5) is None
