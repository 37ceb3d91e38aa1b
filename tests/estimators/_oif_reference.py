"""A plain-Python Online Isolation Forest with the native one's semantics and generator, to
agree with it record by record (tests/estimators/test_stream.py). Slow, written to be read:
nodes are dicts, a tree is its root."""

from __future__ import annotations

import math

import numpy as np

_MASK = (1 << 64) - 1


class SplitMix:
    def __init__(self, state: int):
        self.state = state

    def next(self) -> int:
        self.state = (self.state + 0x9E3779B97F4A7C15) & _MASK
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
        return z ^ (z >> 31)

    def uniform(self) -> float:
        return (self.next() >> 11) * (1.0 / 9007199254740992.0)


class ReferenceOIF:
    def __init__(self, n_trees, max_leaf_samples, window_size, adaptive, seed, d):
        self.eta, self.window, self.adaptive, self.d, self.n_trees = max_leaf_samples, window_size, adaptive, d, n_trees
        seeder = SplitMix(seed)
        self.rngs = [SplitMix(seeder.next()) for _ in range(n_trees)]
        self.roots = [None] * n_trees
        self.memory = []  # the window, oldest first

    def c(self, n: float) -> float:
        return 0.0 if n < self.eta else math.log(n / self.eta) / math.log(4.0)

    def split_size(self, depth: int) -> float:
        return self.eta * 2.0**depth if self.adaptive else float(self.eta)

    def build(self, rng, pts: np.ndarray, depth: int, limit: float) -> dict:
        node = {"depth": depth, "count": len(pts), "left": None,
                "lo": pts.min(0) if len(pts) else np.full(self.d, np.inf),
                "hi": pts.max(0) if len(pts) else np.full(self.d, -np.inf)}
        if len(pts) < self.split_size(depth) or depth >= limit:
            return node
        f = rng.next() % self.d
        split = node["lo"][f] + (node["hi"][f] - node["lo"][f]) * rng.uniform()
        below = pts[:, f] < split
        node.update(feature=f, split=split, left=self.build(rng, pts[below], depth + 1, limit),
                    right=self.build(rng, pts[~below], depth + 1, limit))
        return node

    def learn_tree(self, t: int, x: np.ndarray, limit: float) -> None:
        rng = self.rngs[t]
        if self.roots[t] is None:
            self.roots[t] = self.build(rng, np.empty((0, self.d)), 0, 0.0)
        node, parent, side = self.roots[t], None, None
        while True:
            node["count"] += 1
            if node["left"] is None:  # only a leaf's box is ever read (to sample, or to merge)
                node["lo"], node["hi"] = np.minimum(node["lo"], x), np.maximum(node["hi"], x)
                if node["count"] >= self.split_size(node["depth"]) and node["depth"] < limit:
                    lo, hi = node["lo"], node["hi"]
                    pts = np.array([[lo[j] + (hi[j] - lo[j]) * rng.uniform() for j in range(self.d)]
                                    for _ in range(node["count"])]).reshape(-1, self.d)
                    sub = self.build(rng, pts, node["depth"], limit)
                    if parent is None:
                        self.roots[t] = sub
                    else:
                        parent[side] = sub
                return
            parent, side = node, ("left" if x[node["feature"]] < node["split"] else "right")
            node = node[side]

    def collapse(self, node: dict) -> None:
        if node["left"] is None:
            return
        self.collapse(node["left"])
        self.collapse(node["right"])
        node["lo"] = np.minimum(node["left"]["lo"], node["right"]["lo"])
        node["hi"] = np.maximum(node["left"]["hi"], node["right"]["hi"])
        node["left"] = node["right"] = None

    def unlearn_tree(self, t: int, x: np.ndarray) -> None:
        node = self.roots[t]
        while True:
            node["count"] -= 1
            if node["left"] is None:
                return
            if node["count"] < self.split_size(node["depth"]):
                self.collapse(node)  # a leaf again, its box the union of its leaves' boxes
                return
            node = node["left"] if x[node["feature"]] < node["split"] else node["right"]

    def learn(self, x: np.ndarray) -> None:
        limit = self.c(len(self.memory) + 1)
        for t in range(self.n_trees):
            self.learn_tree(t, x, limit)
        self.memory.append(x)
        if len(self.memory) > self.window:
            old = self.memory.pop(0)
            for t in range(self.n_trees):
                self.unlearn_tree(t, old)

    def score(self, x: np.ndarray) -> float:
        if not self.memory:
            return 0.0
        total = 0.0
        for root in self.roots:
            node = root
            while node["left"] is not None:
                node = node["left"] if x[node["feature"]] < node["split"] else node["right"]
            total += node["depth"] + self.c(node["count"])
        return 2.0 ** (-(total / self.n_trees) / (self.c(len(self.memory)) + np.finfo(float).eps))
