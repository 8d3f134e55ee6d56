"""assets/ingest/audio"""
