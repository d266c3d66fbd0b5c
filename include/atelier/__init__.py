"""Atelier: batch AI content generation for fashion catalog drops, orchestrated by Airflow 3."""

__version__ = "0.1.0"
