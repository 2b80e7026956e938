"""scripts/same_space.py runs end to end on a small bundle: every variant gets a sweep and a row at equal recall for
both same-space pairs, the variants that scan exactly reach recall 1.000 once they visit every row, and the
JSON holds the same numbers as the printed tables."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

import dualvec.bench.same_space as same_space

ROOT = Path(__file__).resolve().parent.parent
BUNDLE = ROOT / "tests" / "fixtures" / "bundle_v1" / "hnsw"


def test_every_variant_is_measured_on_both_same_space_pairs(tmp_path):
    out = tmp_path / "same.json"
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "same_space.py"), str(BUNDLE), "--variants",
                           "default,hnsw16@80,ivfhnsw4,pca4,table8", "--queries", "20", "--targets", "0.9",
                           "--stop-recall", "1.0", "--max-us", "1e9", "--json", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert sorted(result["pairs"]) == ["in-in", "out-out"]
    for pair, entry in result["pairs"].items():
        assert sorted(entry["variants"]) == ["default", "hnsw16@80", "ivfhnsw4", "pca4"]
        for name in ("ivfhnsw4", "pca4", "hnsw16@80"):
            last = entry["variants"][name]["sweep"][-1]
            # every list probed / a beam as wide as the vocabulary, then exact scores: the exact answers
            assert (last["uniform"]["recall"], last["frequency"]["recall"]) == (1.0, 1.0), (pair, name, last)
        rows = entry["equal_recall"]["0.9"]
        assert set(rows) == {"default", "hnsw16@80", "ivfhnsw4", "pca4", "table8"}
        table = rows["table8"]
        assert table["recall"] == rows["default"]["recall"] and table["setting"] == rows["default"]["setting"]
        assert table["memory_mib"] == round(result["n"] * 8 * 8 / 2**20, 1)
        assert f"{pair.upper()} at recall >= 0.9 on both draws" in done.stdout


def test_variant_names_are_parsed_and_unknown_ones_refused():
    assert same_space.parse_variant("hnsw48@120") == ("hnsw", (48, 120))
    assert same_space.parse_variant("hnsw64") == ("hnsw", (64,))
    assert same_space.parse_variant("ivfhnsw8") == ("ivfhnsw", (8,))
    assert same_space.parse_variant("pca128") == ("pca", (128,))
    assert same_space.parse_variant("table16") == ("table", (16,))
    try:
        same_space.parse_variant("lsh")
    except ValueError as exc:
        assert "unknown variant 'lsh'" in str(exc)
    else:
        raise AssertionError("lsh was accepted")


def test_the_small_list_ivf_puts_every_row_in_one_list_and_scans_exactly():
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((400, 16)).astype(np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    variant = same_space.variant_ivfhnsw(rows, 8, seed=1)
    assert variant.notes["nlist"] == 50
    q = rows[:5]
    exact = np.argsort(-(q @ rows.T), axis=1)[:, :10]
    for i in range(5):
        got = variant.search(q[i:i + 1], 50, 10)  # every list probed
        assert got.tolist() == exact[i].tolist()
