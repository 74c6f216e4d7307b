"""MLflow tracking: the store and its failure policy, the runs a pipeline records
into, their lineage, the params and metric names they carry, and earlier runs."""
