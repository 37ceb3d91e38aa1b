"""
pynomaly's native core (private; use the pynomaly package)
"""
from __future__ import annotations
import collections.abc
import numpy
import numpy.typing
import typing
import typing_extensions
__all__: list[str] = ['Forest', 'ForestExplainer', 'HalfSpaceTreesState', 'NetLoop', 'OnlineIsolationForestState', 'ServedForest', 'average_path_length', 'build_info', 'contamination_threshold', 'drift_count', 'ecdf', 'ecdf_count', 'fast_detect', 'forest_grow', 'forest_plan', 'knn', 'knn_choose_algorithm', 'minmax_scale', 'percentile', 'score_moments', 'set_iforest_kernel', 'set_simd', 'sorted_scores', 'unify', 'zscore']
class Forest:
    @staticmethod
    def train(X: numpy.ndarray, n_estimators: typing.SupportsInt | typing.SupportsIndex, max_samples: typing.SupportsInt | typing.SupportsIndex, max_features: typing.SupportsInt | typing.SupportsIndex, seed: typing.SupportsInt | typing.SupportsIndex, n_jobs: typing.SupportsInt | typing.SupportsIndex, progress: typing.Any = None) -> Forest:
        """
        Grow a forest; progress(fraction of trees grown) is called from this thread, at most every 50 ms.
        """
    def __init__(self, n_features: typing.SupportsInt | typing.SupportsIndex, psi: typing.SupportsInt | typing.SupportsIndex, tree_offset: numpy.ndarray, feature: numpy.ndarray, threshold: numpy.ndarray, left: numpy.ndarray, leaf_value: numpy.ndarray) -> None:
        ...
    def arrays(self) -> dict:
        """
        Copies of the defining node arrays (see ForestNodes).
        """
    def path_length_sum(self, X: numpy.ndarray, n_jobs: typing.SupportsInt | typing.SupportsIndex = 1) -> numpy.typing.NDArray[numpy.float64]:
        ...
    def score(self, X: numpy.ndarray, n_jobs: typing.SupportsInt | typing.SupportsIndex = 1) -> numpy.typing.NDArray[numpy.float64]:
        ...
    @property
    def depth(self) -> int:
        ...
    @property
    def layout(self) -> str:
        ...
    @property
    def memory_bytes(self) -> int:
        """
        Bytes held: node arrays and compiled scoring layouts.
        """
    @property
    def n_features(self) -> int:
        ...
    @property
    def n_trees(self) -> int:
        ...
    @property
    def psi(self) -> int:
        ...
class ForestExplainer:
    def __init__(self, forest: Forest, max_table_bits: typing.SupportsInt | typing.SupportsIndex = 10, table_budget: typing.SupportsInt | typing.SupportsIndex = 8388608) -> None:
        """
        Node counts recovered from the leaf values and per-leaf TreeSHAP tables for `forest`.
        """
    def path(self, X: numpy.ndarray, n_jobs: typing.SupportsInt | typing.SupportsIndex = 1) -> numpy.ndarray:
        """
        DIFFI-style path attribution of E[h(x)], (n, d) float64.
        """
    def tree_shap(self, X: numpy.ndarray, n_jobs: typing.SupportsInt | typing.SupportsIndex = 1) -> numpy.ndarray:
        """
        Exact path-dependent TreeSHAP of the mean path length E[h(x)], (n, d) float64.
        """
    @property
    def direct_leaves(self) -> int:
        ...
    @property
    def expected_value(self) -> float:
        ...
    @property
    def table_entries(self) -> int:
        ...
class OnlineIsolationForestState:
    @staticmethod
    def from_bytes(blob: bytes) -> OnlineIsolationForestState:
        ...
    def __init__(self, n_trees: typing.SupportsInt | typing.SupportsIndex, max_leaf_samples: typing.SupportsInt | typing.SupportsIndex, window_size: typing.SupportsInt | typing.SupportsIndex, adaptive: bool, seed: typing.SupportsInt | typing.SupportsIndex, n_features: typing.SupportsInt | typing.SupportsIndex) -> None:
        ...
    def learn_many(self, X: typing.Any) -> None:
        ...
    def learn_one(self, x: typing.Any, keys: tuple) -> None:
        ...
    def score_learn_many(self, X: typing.Any) -> numpy.typing.NDArray[numpy.float64]:
        ...
    def score_many(self, X: typing.Any, n_jobs: typing.SupportsInt | typing.SupportsIndex = 1) -> numpy.typing.NDArray[numpy.float64]:
        ...
    def score_one(self, x: typing.Any, keys: tuple) -> float:
        ...
    def to_bytes(self) -> bytes:
        ...
    @property
    def memory_bytes(self) -> int:
        """
        Bytes of native state held (grows with the trees and window, not the stream).
        """
    @property
    def n_features(self) -> int:
        ...
    @property
    def params(self) -> dict:
        ...
    @property
    def n_nodes(self) -> int:
        ...
    @property
    def window_count(self) -> int:
        ...
class ServedForest:
    """
    One isolation-forest version as the daemon's native path serves it (immutable).
    """
    def __init__(self, forest: typing.Any, n_features: typing.SupportsInt | typing.SupportsIndex, threshold: typing.SupportsFloat | typing.SupportsIndex, name: str, version: typing.SupportsInt | typing.SupportsIndex) -> None:
        ...
    @property
    def n_features(self) -> int:
        ...
    @property
    def name(self) -> str:
        ...
    @property
    def threshold(self) -> float:
        ...
    @property
    def version(self) -> int:
        ...
class _NetFrame:
    """
    A frame body handed over by the connection loop.
    """
    def __len__(self) -> int:
        ...
class HalfSpaceTreesState:
    @staticmethod
    def from_bytes(blob: bytes) -> HalfSpaceTreesState:
        ...
    @staticmethod
    def grow(n_trees: typing.SupportsInt | typing.SupportsIndex, height: typing.SupportsInt | typing.SupportsIndex, window_size: typing.SupportsInt | typing.SupportsIndex, lo: typing.Any, hi: typing.Any, mt_state: typing.Any) -> HalfSpaceTreesState:
        """
        Grow River's trees over limits [lo, hi) per feature, drawing from a Python random state.
        """
    def __init__(self, n_trees: typing.SupportsInt | typing.SupportsIndex, height: typing.SupportsInt | typing.SupportsIndex, window_size: typing.SupportsInt | typing.SupportsIndex, n_features: typing.SupportsInt | typing.SupportsIndex, feature: typing.Any, threshold: typing.Any, l_mass: typing.Any, r_mass: typing.Any, counter: typing.SupportsInt | typing.SupportsIndex, first_window: bool) -> None:
        """
        Trees given node by node, heap order per tree (from River's trees).
        """
    def arrays(self) -> dict:
        ...
    def learn_many(self, X: typing.Any) -> None:
        ...
    def learn_one(self, x: typing.Any, keys: tuple) -> None:
        ...
    def score_learn_many(self, X: typing.Any) -> numpy.typing.NDArray[numpy.float64]:
        ...
    def score_many(self, X: typing.Any, n_jobs: typing.SupportsInt | typing.SupportsIndex = 1) -> numpy.typing.NDArray[numpy.float64]:
        ...
    def score_one(self, x: typing.Any, keys: tuple) -> float:
        ...
    def to_bytes(self) -> bytes:
        ...
    @property
    def memory_bytes(self) -> int:
        """
        Bytes of native state held (grows with the trees and window, not the stream).
        """
    @property
    def n_features(self) -> int:
        ...
    @property
    def params(self) -> dict:
        ...
class NetLoop:
    """
    The daemon's native connection loop (python/src/netloop.hpp); driven by pynomaly_daemon.netloop.
    """
    def __init__(self, listen_fd: typing.SupportsInt | typing.SupportsIndex, threads: typing.SupportsInt | typing.SupportsIndex, max_frame: typing.SupportsInt | typing.SupportsIndex, fast_rows: typing.SupportsInt | typing.SupportsIndex, alone_rows: typing.SupportsInt | typing.SupportsIndex, max_connections: typing.SupportsInt | typing.SupportsIndex, conn_max_in_flight: typing.SupportsInt | typing.SupportsIndex, max_rx_bytes: typing.SupportsInt | typing.SupportsIndex, idle_timeout: typing.SupportsFloat | typing.SupportsIndex, frame_timeout: typing.SupportsFloat | typing.SupportsIndex, write_timeout: typing.SupportsFloat | typing.SupportsIndex, allowed_uids: collections.abc.Sequence[typing.SupportsInt | typing.SupportsIndex] | None, fast_uids: collections.abc.Sequence[typing.SupportsInt | typing.SupportsIndex] | None = None, fast_gids: collections.abc.Sequence[typing.SupportsInt | typing.SupportsIndex] | None = None, max_per_uid: typing.SupportsInt | typing.SupportsIndex = 256, admin_reserve: typing.SupportsInt | typing.SupportsIndex = 16, admin_uids: collections.abc.Sequence[typing.SupportsInt | typing.SupportsIndex] = [], admin_gids: collections.abc.Sequence[typing.SupportsInt | typing.SupportsIndex] = [], duration_bounds: collections.abc.Sequence[typing.SupportsFloat | typing.SupportsIndex] = [], drift_rows: typing.SupportsInt | typing.SupportsIndex = 0) -> None:
        ...
    def clear_models(self) -> None:
        ...
    def close(self, conn: typing.SupportsInt | typing.SupportsIndex) -> None:
        ...
    def counters(self) -> dict:
        ...
    def drain(self) -> None:
        ...
    def send(self, conn: typing.SupportsInt | typing.SupportsIndex, data: typing_extensions.Buffer) -> None:
        ...
    def set_model(self, name: str, version: int | None, served: typing.Any) -> None:
        ...
    def start(self) -> None:
        ...
    def stop(self) -> None:
        ...
    def take(self) -> list:
        ...
    def take_hits(self) -> list:
        ...
    def update(self, conn: typing.SupportsInt | typing.SupportsIndex, taken: typing.SupportsInt | typing.SupportsIndex, in_flight: typing.SupportsInt | typing.SupportsIndex) -> None:
        ...
    @property
    def connections(self) -> int:
        ...
    @property
    def notify_fd(self) -> int:
        ...
def average_path_length(n: typing.SupportsFloat | typing.SupportsIndex) -> float:
    ...
def build_info() -> dict:
    """
    What this binary can do: the SIMD target in use, those the CPU supports, OpenMP, compiler.
    """
def contamination_threshold(scores: typing.Any, contamination: typing.SupportsFloat | typing.SupportsIndex, n_jobs: typing.SupportsInt | typing.SupportsIndex = 1) -> float:
    ...
def drift_count(X: numpy.ndarray, edges: typing.Any, offsets: typing.Any, n_jobs: typing.SupportsInt | typing.SupportsIndex = 1) -> tuple:
    """
    Bin counts of X's rows on a drift profile's edges: (counts int64[offsets[-1] + n_features], tails float64[n_features, 2]); feature f's edges are edges[offsets[f]:offsets[f+1]].
    """
def ecdf(sorted: typing.Any, scores: typing.Any, n_jobs: typing.SupportsInt | typing.SupportsIndex = 1) -> numpy.typing.NDArray[numpy.float64]:
    ...
def ecdf_count(sorted: typing.Any, scores: typing.Any, n_jobs: typing.SupportsInt | typing.SupportsIndex = 1) -> numpy.typing.NDArray[numpy.int64]:
    ...
def fast_detect(buffer: typing_extensions.Buffer, pos: typing.SupportsInt | typing.SupportsIndex, end: typing.SupportsInt | typing.SupportsIndex, max_frame: typing.SupportsInt | typing.SupportsIndex, max_rows: typing.SupportsInt | typing.SupportsIndex, served: dict, tally: bool = False, sample_rows: typing.SupportsInt | typing.SupportsIndex = 0, why_rows: typing.SupportsInt | typing.SupportsIndex = 0) -> tuple:
    """
    The daemon's native path for small raw-rows detect requests (see python/src/fastpath.cpp).
    """
def forest_grow(X: numpy.ndarray, x_rows: numpy.ndarray, rows: numpy.ndarray, features: numpy.ndarray, rng_state: numpy.ndarray) -> dict:
    """
    Grow the planned trees from their gathered rows: row x_rows[t, i] of X is tree t's sampled row rows[t, i]. Returns the trees' node arrays (as Forest.arrays()); a non-finite value is reported at its row in `rows`.
    """
def forest_plan(n: typing.SupportsInt | typing.SupportsIndex, d: typing.SupportsInt | typing.SupportsIndex, n_estimators: typing.SupportsInt | typing.SupportsIndex, max_samples: typing.SupportsInt | typing.SupportsIndex, max_features: typing.SupportsInt | typing.SupportsIndex, seed: typing.SupportsInt | typing.SupportsIndex) -> dict:
    """
    Each tree's features (T x k), rows in draw order (T x psi) and random state, as Forest.train draws them.
    """
def knn(X: numpy.ndarray, k: typing.SupportsInt | typing.SupportsIndex, Y: typing.Any = None, metric: str = 'euclidean', algorithm: str = 'auto', n_jobs: typing.SupportsInt | typing.SupportsIndex = 1) -> tuple[numpy.typing.NDArray[numpy.float64], numpy.typing.NDArray[numpy.int64], str]:
    """
    Exact k nearest neighbours: (distances, indices, algorithm used); see cpp/knn.hpp.
    """
def knn_choose_algorithm(n: typing.SupportsInt | typing.SupportsIndex, d: typing.SupportsInt | typing.SupportsIndex, metric: str = 'euclidean') -> str:
    ...
def minmax_scale(scores: typing.Any, lo: typing.SupportsFloat | typing.SupportsIndex, hi: typing.SupportsFloat | typing.SupportsIndex, n_jobs: typing.SupportsInt | typing.SupportsIndex = 1, out: typing.Any = None) -> numpy.typing.NDArray[numpy.float64]:
    ...
def percentile(scores: typing.Any, q: typing.SupportsFloat | typing.SupportsIndex, n_jobs: typing.SupportsInt | typing.SupportsIndex = 1) -> float:
    ...
def score_moments(scores: typing.Any, n_jobs: typing.SupportsInt | typing.SupportsIndex = 1) -> tuple[int, float, float, float, float]:
    """
    (n, mean, population std, min, max) of finite scores.
    """
def set_iforest_kernel(name: str) -> None:
    """
    Force one isolation-forest kernel by name (see build_info()['iforest_kernels']); 'auto' undoes it.
    """
def set_simd(arg0: str) -> None:
    """
    Select the SIMD target used by all kernels (at most the best supported one).
    """
def sorted_scores(scores: typing.Any, n_jobs: typing.SupportsInt | typing.SupportsIndex = 1) -> numpy.typing.NDArray[numpy.float64]:
    ...
def unify(scores: typing.Any, mean: typing.SupportsFloat | typing.SupportsIndex, std: typing.SupportsFloat | typing.SupportsIndex, n_jobs: typing.SupportsInt | typing.SupportsIndex = 1, out: typing.Any = None) -> numpy.typing.NDArray[numpy.float64]:
    ...
def zscore(scores: typing.Any, mean: typing.SupportsFloat | typing.SupportsIndex, std: typing.SupportsFloat | typing.SupportsIndex, n_jobs: typing.SupportsInt | typing.SupportsIndex = 1, out: typing.Any = None) -> numpy.typing.NDArray[numpy.float64]:
    ...
