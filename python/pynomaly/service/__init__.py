"""The use cases every face calls: train, detect, lifecycle, datasets, import/export, keys and
audit records (:mod:`.usecases`), the Scorer and the decision rule (:mod:`.scorer`), jobs,
alerts and metrics. Faces use ``pynomaly.service.<function>``; the modules below it (store,
estimators) are this layer's to call.
"""

from pynomaly.service.usecases import *  # noqa: F401,F403 - the service's API, as before the layers
from pynomaly.service.usecases import __all__  # noqa: F401
