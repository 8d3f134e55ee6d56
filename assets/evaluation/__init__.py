"""assets/evaluation"""
