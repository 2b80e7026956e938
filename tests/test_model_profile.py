"""The crowd table of scripts/check_model_profile.py: its chunked exact scan gives, per query, the best and 10th
best exact cosine of dualvec.kernel.truth.exact_truth (the query word left out) and counts the rows within a
margin of the 10th as a plain numpy count over every row does, whatever the chunk size."""
from __future__ import annotations

import numpy as np

import dualvec.bench.model_profile as model_profile
from dualvec.kernel.truth import TIE_EPS, QuerySample, exact_truth


def unit(a: np.ndarray) -> np.ndarray:
    return (a / np.linalg.norm(a, axis=1, keepdims=True)).astype(np.float32)


def dense_rows(seed: int = 3) -> np.ndarray:
    """600 spread rows and 400 rows crowded around one direction (a dense rare-word region)."""
    rng = np.random.default_rng(seed)
    spread = rng.standard_normal((600, 16))
    centre = rng.standard_normal(16)
    crowd = centre + 0.08 * rng.standard_normal((400, 16))
    return unit(np.vstack([spread, crowd]))


def test_crowd_matches_exact_truth_and_a_plain_count(monkeypatch):
    rows = dense_rows()
    other = unit(np.random.default_rng(4).standard_normal((1000, 16)))
    ids = np.array([0, 5, 599, 600, 700, 999], np.int64)
    for chunk_scores in (1_000, 2_500, 10**8):  # one query per chunk, two, all at once
        monkeypatch.setattr(model_profile, "CROWD_CHUNK_SCORES", chunk_scores)
        for target, queries in ((rows, rows[ids]), (other, rows[ids])):
            got = model_profile.crowd(target, queries, ids, k=10, margins=(0.01, 0.05))
            truth = exact_truth(target, QuerySample(ids, queries), 10)
            np.testing.assert_allclose(got.kth, truth.thresholds + TIE_EPS, atol=1e-6)
            np.testing.assert_allclose(got.top1, truth.scores[:, 0], atol=1e-6)
            exact = queries.astype(np.float64) @ target.astype(np.float64).T
            exact[np.arange(len(ids)), ids] = -np.inf
            for mg in (0.01, 0.05):
                plain = (exact >= got.kth[:, None].astype(np.float64) - mg - 1e-6).sum(axis=1)
                assert np.abs(got.within[mg] - plain).max() <= 1, (mg, got.within[mg], plain)
                assert (got.within[mg] >= 10).all()


def test_a_crowded_region_shows_in_the_table():
    rows = dense_rows()
    lines = model_profile.crowd_table({"IN": rows, "OUT": rows}, {"uniform": np.array([650, 660, 670, 10, 20])},
                                      k=10, queries=3)
    assert lines[0].startswith("| queries | pair | top-1 cosine (median) | 10th cosine (median) |")
    assert len(lines) == 2 + 4
    in_in = next(line for line in lines if "| IN->IN |" in line)
    cells = [c.strip() for c in in_in.strip("|").split("|")]
    median_within_005 = int(cells[5].split("/")[0].replace(",", ""))
    assert float(cells[2]) > 0.95 and median_within_005 > 50  # queries from the crowd: dozens of near-ties


def test_make_models_dense_profile_is_cbow_for_three_epochs_unless_told_otherwise():
    from dualvec.bench.make_model import parse_args
    base = ["--words", "1000", "--out", "unused"]
    usual = parse_args(base)
    assert (usual.sg, usual.epochs) == (True, 5)
    dense = parse_args(base + ["--profile", "dense"])
    assert (dense.sg, dense.epochs) == (False, 3)
    assert parse_args(base + ["--profile", "dense", "--epochs", "2"]).epochs == 2
    assert parse_args(base + ["--cbow"]).sg is False
