"""scripts/index_options.py runs end to end on a small bundle: a row per variant and pair, recall in [0, 1], and
exact indexes (full vectors) find the exact answers when they visit everything."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUNDLE = ROOT / "tests" / "fixtures" / "bundle_v1" / "ivf"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "index_options.py"), str(BUNDLE), *args],
                          capture_output=True, text=True, timeout=300)


def test_every_variant_and_pair_gets_a_row():
    done = run("--variants", "hnsw-sq8,hnsw-flat-shuffled,ivf-flat,ivf-pq", "--targets", "in,out",
               "--settings", "4,4096", "--queries", "30")
    assert done.returncode == 0, done.stderr
    table = [line for line in done.stdout.splitlines() if line.startswith("| ") and " us " in line]
    rows = table[len(table) // 2:]  # the summary table repeats the rows printed as they came
    assert len(rows) == 4 * 4  # 4 variants x (IN->IN, OUT->IN, IN->OUT, OUT->OUT)
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        for cell in cells[2:4]:
            uniform, frequency = (float(x) for x in cell.split(",")[0].split("/"))
            assert 0.0 <= uniform <= 1.0 and 0.0 <= frequency <= 1.0
        if cells[0] == "ivf-flat":  # nprobe 4096 visits every list: the exact answer
            assert cells[3].startswith("1.000/1.000"), row


def test_an_unknown_variant_is_named():
    done = run("--variants", "hnsw-flat,banana")
    assert done.returncode == 2 and "banana" in done.stderr
