"""Pure PyTorch and scikit-learn models of clinfuse: datasets, encoders, learners, fusion,
calibration, the shard format (no Dagster, no MLflow, nothing else of clinfuse).

Import the submodules themselves (`clinfuse.models.training`, ...): this package imports nothing
so that plain code can read `clinfuse.models.modalities` without loading torch.
"""
