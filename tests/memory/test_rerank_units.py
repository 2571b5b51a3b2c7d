"""The re-ranking stage (pure): merging two ranked lists, weighted RRF, score fusion, MMR."""

from __future__ import annotations

from services.memory import rerank
from services.memory.rerank import Candidate, ScoreFusion, WeightedRRF, merge, mmr


def _pool() -> list[Candidate]:
    # Dense barely prefers "a" over "b" (both far above its tail); BM25 strongly prefers
    # "b" (an exact identifier).
    dense = [("a", 0.51, {}), ("c", 0.50, {}), ("b", 0.49, {}), ("e", 0.10, {})]
    sparse = [("b", 9.0, {}), ("a", 1.0, {}), ("d", 0.5, {})]
    return merge(dense, sparse)


def test_merge_keeps_one_candidate_per_key_with_both_ranks() -> None:
    pool = {c.key: c for c in _pool()}
    assert set(pool) == {"a", "b", "c", "d", "e"}
    assert (pool["b"].dense_rank, pool["b"].sparse_rank) == (2, 0)
    assert pool["c"].sparse_rank is None and pool["d"].dense_rank is None


def test_equal_weight_rrf_loses_the_clear_bm25_winner_that_score_fusion_keeps() -> None:
    assert WeightedRRF(1.0, 1.0).rerank("q", _pool())[0].key == "a"
    assert ScoreFusion(0.5).rerank("q", _pool())[0].key == "b"
    assert rerank.DEFAULT.rerank("q", _pool())[0].key == "b"


def test_weights_move_the_order() -> None:
    assert WeightedRRF(0.1, 1.0).rerank("q", _pool())[0].key == "b"
    assert ScoreFusion(1.0).rerank("q", _pool())[0].key == "a"
    ranked = ScoreFusion(0.5).rerank("q", _pool())
    assert [c.score for c in ranked] == sorted((c.score for c in ranked), reverse=True)
    assert ScoreFusion().rerank("q", []) == []


def test_mmr_skips_a_near_copy_of_what_it_already_picked() -> None:
    ranked = [
        Candidate("a", score=1.0, vector=(1.0, 0.0)),
        Candidate("a2", score=0.95, vector=(0.99, 0.01)),
        Candidate("b", score=0.9, vector=(0.0, 1.0)),
    ]
    assert [c.key for c in mmr(ranked, 2, lambda_=0.5)] == ["a", "b"]
    assert [c.key for c in mmr(ranked, 2, lambda_=1.0)] == ["a", "a2"]
