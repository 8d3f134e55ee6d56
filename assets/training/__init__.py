"""assets/training"""
