"""Maintainer and test tools, outside the segpipe package: the team's stack
(PostgreSQL, S3-compatible storage, MLflow), the offline plots page, and the
writer of dvc.yaml's code deps. `pip install segpipe` installs none of them."""
