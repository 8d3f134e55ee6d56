"""assets/ingest/dicom"""
