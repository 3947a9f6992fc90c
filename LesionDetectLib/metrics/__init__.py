"""Evaluation measures shared by the methods (one place for each)."""
