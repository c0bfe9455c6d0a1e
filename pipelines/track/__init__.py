"""Tracking: MLflow behind one service object (service.py), lineage facts (lineage.py), plots (plots.py)."""
