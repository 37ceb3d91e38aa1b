# A small typed use of pynomaly, checked by mypy in tests/test_typing.py. Each
# "type: ignore[...]" below is an error only a typed package produces; run with
# --warn-unused-ignores, an ignore that is not needed (the types fell back to Any) fails.
from __future__ import annotations

import numpy as np

import pynomaly
from pynomaly import _core, service

X = np.random.default_rng(0).standard_normal((100, 4))
forest: _core.Forest = _core.Forest.train(X, 10, 64, 4, 0, 1)
scores = forest.score(X)
depth: int = forest.depth
wrong_depth: str = forest.depth  # type: ignore[assignment]
info: dict = _core.build_info()
wrong_info: int = _core.build_info()  # type: ignore[assignment]
dist, idx, algorithm = _core.knn(X, 3)
wrong_algorithm: int = algorithm  # type: ignore[assignment]
model = pynomaly.IsolationForest(n_estimators=10).fit(X)
scorer = service.Scorer.of(model, "m")
version: pynomaly.DetectorVersion = scorer.version
