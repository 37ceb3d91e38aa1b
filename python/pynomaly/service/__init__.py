"""The use cases every face calls, one module each: detection (:mod:`.usecases`), training
(:mod:`.training`), a detector's lifecycle (:mod:`.lifecycle`), datasets and stored results
(:mod:`.data`), export and import (:mod:`.transfer`), the home's keys, health and audit
trail (:mod:`.home`); the Scorer and the decision rule (:mod:`.scorer`), jobs, alerts and
metrics. Faces use ``pynomaly.service.<function>``; the modules below it (store, estimators)
are this layer's to call.

Inside the layer imports go one way: metrics is a leaf, alerts counts in metrics, the use
cases queue alerts and count in metrics, jobs runs the use cases.
"""

from pynomaly.service.data import (
    dataset,
    dataset_preview,
    dataset_rows,
    datasets_overview,
    delete_dataset,
    list_datasets,
    load_data,
    result,
    results,
    store_dataset,
)
from pynomaly.service.home import (
    audit_entries,
    audit_record,
    audit_verify,
    check_key,
    doctor,
    home_path,
    init_home,
    key_source,
    reencrypt,
    rotate_key,
)
from pynomaly.service.home import check_reachable, create_key_file, is_encrypted  # noqa: F401 - public, not in __all__
from pynomaly.service.explaining import check_top_k, explain, top_features
from pynomaly.service.lifecycle import activate, archive, delete, list_detectors, overview, show, versions
from pynomaly.service.streaming import stream
from pynomaly.service.training import record_failed_training, train
from pynomaly.service.transfer import export, export_model, import_detector, load_file_for_scoring, write_model_file
from pynomaly.service.usecases import WANT_ALL, Scorer, detect, load_for_scoring, load_model, training_scores
from pynomaly.service import jobs as _jobs  # noqa: F401 - the default reader of metrics.jobs_collector(home); the faces pass jobs.counts themselves

__all__ = [
    "Scorer",
    "WANT_ALL",
    "train",
    "detect",
    "explain",
    "top_features",
    "stream",
    "check_top_k",
    "load_for_scoring",
    "load_file_for_scoring",
    "load_model",
    "training_scores",
    "list_detectors",
    "overview",
    "show",
    "versions",
    "archive",
    "activate",
    "delete",
    "export",
    "import_detector",
    "export_model",
    "write_model_file",
    "load_data",
    "store_dataset",
    "list_datasets",
    "dataset",
    "dataset_preview",
    "dataset_rows",
    "datasets_overview",
    "delete_dataset",
    "result",
    "results",
    "home_path",
    "doctor",
    "init_home",
    "check_key",
    "key_source",
    "rotate_key",
    "reencrypt",
    "audit_record",
    "audit_entries",
    "audit_verify",
    "record_failed_training",
]
