"""The model's four modalities, in the order every table, tensor and report lists them."""

MODALITIES = ("ehr", "text", "image", "audio")
