// The KD-tree kNN search, for low dimension (choose_knn_algorithm says when): exact float64
// distances, boxes that prune subtrees, the same top-k heaps as brute force. Private to knn.cpp:
// the search is one translation unit (the tests build the core from its .cpp files by name), hence
// the unnamed namespace.
#pragma once

#include "knn_shared.hpp"
#include "parallel.hpp"

namespace pynomaly {
namespace {

struct KdTree {
    int64_t n = 0, d = 0;
    std::vector<double> pts;     // rows in tree order (float64 copy: exact for both input types)
    std::vector<int64_t> order;  // tree position -> original row
    struct Node {
        int64_t begin, end, left, right;  // left/right < 0 for a leaf
    };
    std::vector<Node> nodes;
    std::vector<double> lo, hi;  // bounding box of each node, d values each

    static constexpr int64_t kLeaf = 24;

    KdTree(const MatrixView& X) : n(X.rows), d(X.cols) {
        std::vector<double> all(static_cast<size_t>(n * d));
        for (int64_t i = 0; i < n; ++i) read_row(X, i, all.data() + i * d);
        order.resize(n);
        for (int64_t i = 0; i < n; ++i) order[i] = i;
        nodes.reserve(static_cast<size_t>(2 * (n / kLeaf + 1)));
        build(all, 0, n);
        pts.resize(static_cast<size_t>(n * d));
        for (int64_t i = 0; i < n; ++i) std::copy_n(all.data() + order[i] * d, d, pts.data() + i * d);
    }

    int64_t build(const std::vector<double>& all, int64_t begin, int64_t end) {
        const int64_t id = static_cast<int64_t>(nodes.size());
        nodes.push_back({begin, end, -1, -1});
        lo.resize(static_cast<size_t>((id + 1) * d));
        hi.resize(static_cast<size_t>((id + 1) * d));
        double* l = lo.data() + id * d;
        double* h = hi.data() + id * d;
        std::fill_n(l, d, std::numeric_limits<double>::infinity());
        std::fill_n(h, d, -std::numeric_limits<double>::infinity());
        for (int64_t i = begin; i < end; ++i) {
            const double* p = all.data() + order[i] * d;
            for (int64_t j = 0; j < d; ++j) l[j] = std::min(l[j], p[j]), h[j] = std::max(h[j], p[j]);
        }
        if (end - begin <= kLeaf) return id;
        int64_t dim = 0;
        double spread = -1.0;
        for (int64_t j = 0; j < d; ++j)
            if (h[j] - l[j] > spread) spread = h[j] - l[j], dim = j;
        if (spread <= 0.0) return id;  // all rows identical: one (large) leaf
        const int64_t mid = begin + (end - begin) / 2;
        // Ties by original index make the tree, hence nothing else, depend on sort internals.
        std::nth_element(order.begin() + begin, order.begin() + mid, order.begin() + end, [&](int64_t a, int64_t b) {
            const double va = all[a * d + dim], vb = all[b * d + dim];
            return va < vb || (va == vb && a < b);
        });
        const int64_t left = build(all, begin, mid);
        const int64_t right = build(all, mid, end);
        nodes[id].left = left;
        nodes[id].right = right;
        return id;
    }

    double box_key(int64_t node, const double* x, Metric metric) const {
        const double* l = lo.data() + node * d;
        const double* h = hi.data() + node * d;
        double s = 0.0;
        for (int64_t j = 0; j < d; ++j) {
            const double t = x[j] < l[j] ? l[j] - x[j] : (x[j] > h[j] ? x[j] - h[j] : 0.0);
            s += metric == Metric::manhattan ? t : t * t;
        }
        return s;
    }

    // Depth-first, nearer child first; a subtree is skipped only when its box is strictly
    // farther than the k-th key, so ties with a lower index are still found.
    void search(int64_t node, double node_key, const double* x, int64_t self, const ExactMetric& em,
                TopK& heap) const {
        if (node_key > heap.tau()) return;
        const Node& nd = nodes[node];
        if (nd.left < 0) {
            for (int64_t i = nd.begin; i < nd.end; ++i) {
                const int64_t o = order[i];
                if (o == self) continue;
                heap.offer(em.key(x, pts.data() + i * d, 0.0, 0.0), o);
            }
            return;
        }
        const double kl = box_key(nd.left, x, em.metric), kr = box_key(nd.right, x, em.metric);
        if (kl <= kr) {
            search(nd.left, kl, x, self, em, heap);
            search(nd.right, kr, x, self, em, heap);
        } else {
            search(nd.right, kr, x, self, em, heap);
            search(nd.left, kl, x, self, em, heap);
        }
    }
};

void kd_tree_search(const MatrixView& data, const MatrixView* queries, int64_t k, Metric metric, int n_threads,
                    const CancelCheck& cancel, double* dist, int64_t* idx) {
    const KdTree tree(data);
    const ExactMetric em{metric, data.cols};
    const int64_t d = data.cols;
    const int64_t nq = queries ? queries->rows : data.rows;
    const int64_t n_chunks = (nq + kQueryBlock - 1) / kQueryBlock;
    parallel_chunks(n_chunks, n_threads, cancel, [&](int64_t chunk) {
        const int64_t q0 = chunk * kQueryBlock, q1 = std::min(nq, q0 + kQueryBlock);
        std::vector<double> x(d);
        for (int64_t t = q0; t < q1; ++t) {
            // Self-queries go in tree order: neighbouring queries share the paths they visit.
            const int64_t qi = queries ? t : tree.order[t];
            const double* xp;
            if (queries) {
                read_row(*queries, qi, x.data());
                xp = x.data();
            } else {
                xp = tree.pts.data() + t * d;
            }
            TopK heap{dist + qi * k, idx + qi * k, k};
            tree.search(0, tree.box_key(0, xp, metric), xp, queries ? -1 : qi, em, heap);
            heap.finish(em);
        }
    });
}

}  // namespace
}  // namespace pynomaly
