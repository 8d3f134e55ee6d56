"""assets/features"""
