"""Detectors and their kernels' Python side: IsolationForest, LOF, KNN (:mod:`.iforest`,
:mod:`.neighbors`), the shared estimator contract (:mod:`.base`), scores and combination, the
model format, the registry of algorithm names, the adapters (PyOD, PyTorch, JAX) and Dask.
Uses the native core and the domain; knows nothing of storage or serving.
"""
