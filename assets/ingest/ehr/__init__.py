"""assets/ingest/ehr"""
