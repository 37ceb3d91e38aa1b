"""The only place with SQL and files. From the bottom up: what a home is (:mod:`._home`), the
database seam (:mod:`._db`, given a resolved home), every table and its migrations and the one
way to open a home's database (:mod:`._schema`), the modules that own rows (:mod:`.audit`,
:mod:`.revocations`, :mod:`.jobs`, :mod:`.alerts`), and the repository of detectors, versions,
artifacts, datasets and results (:mod:`.repository`, a facade over :mod:`._versions`,
:mod:`._artifacts`, :mod:`._records`, :mod:`._sealing` and :mod:`._doctor`); sealing and keys,
export files, data files. Builds no models (that is the estimators'); the service layer calls it.
"""
