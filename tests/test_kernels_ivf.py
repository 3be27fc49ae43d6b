"""The inverted-file index (recs_kernels.ivf) against brute force."""
import numpy as np

from recs_kernels import ivf, topk


def _clustered(n=2000, d=16, seed=0, noise=0.4):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(25, d))
    return (centres[rng.integers(0, 25, n)] + noise * rng.normal(size=(n, d))).astype(np.float32)


def test_index_partitions_every_item_into_bounded_clusters():
    X = _clustered()
    idx = ivf.Index(X, cluster_size=50, max_ratio=2.0)
    sizes = np.diff(idx.offsets)
    assert sizes.sum() == X.shape[0] and sizes.min() > 0 and sizes.max() <= 100
    assert sorted(idx.order.tolist()) == list(range(X.shape[0]))
    np.testing.assert_array_equal(idx.X_sorted[idx.pos], X)
    np.testing.assert_array_equal(idx.cluster_of[idx.order], np.repeat(np.arange(idx.n_clusters), sizes))


def test_scan_gives_the_dot_products_of_the_probed_clusters():
    X = _clustered(n=700)
    idx = ivf.Index(X, cluster_size=40)
    Q = np.random.default_rng(1).normal(size=(30, X.shape[1])).astype(np.float32)
    probes, S = idx.probe(Q, 3, with_scores=True)
    np.testing.assert_allclose(S, Q @ idx.centroids.T, rtol=1e-5, atol=1e-5)
    assert (np.take_along_axis(S, probes.astype(np.int64), 1)[:, :1] >= S.max(axis=1, keepdims=True) - 1e-6).all()
    buf, start = idx.scan(Q, probes)
    for r in range(30):
        for p in range(3):
            c = probes[r, p]
            items = idx.order[idx.offsets[c]:idx.offsets[c + 1]]
            got = buf[start[r, p]:start[r, p] + items.size]
            np.testing.assert_allclose(got, X[items] @ Q[r], rtol=1e-4, atol=1e-4)


def test_similar_probing_every_cluster_is_exact_and_few_probes_recall_most():
    X = _clustered(n=1500, noise=0.8)
    ref_ids, ref_sc = topk.similar(X, 10)
    ids, sc = ivf.similar(X, 10, nprobe=1000, cluster_size=50)
    np.testing.assert_allclose(sc, ref_sc, rtol=1e-4, atol=1e-5)
    assert (ids == ref_ids).mean() > 0.99
    assert not (ids == np.arange(X.shape[0])[:, None]).any()  # never itself
    few, _ = ivf.similar(X, 10, nprobe=4, cluster_size=50)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(few, ref_ids)])
    one, _ = ivf.similar(X, 10, nprobe=1, cluster_size=50)
    recall_one = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(one, ref_ids)])
    assert 0.9 < recall and recall_one < recall, (recall, recall_one)
