"""assets/ingest"""
