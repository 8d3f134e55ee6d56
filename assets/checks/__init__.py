"""assets/checks"""
