"""The only place with SQL and files: the database seam (:mod:`._db`), every table's migrations
(:mod:`._schema`), the repository of detectors, versions, artifacts, datasets and results
(:mod:`.repository`), sealing and keys, export files, data files, the audit trail and token
revocations. Builds no models (that is the estimators'); the service layer calls it.
"""
