"""Airflow-side support for the ML pipelines: settings, the step/pod factory, promotion and registry logic.

Light dependencies only: DAG files import this package at parse time.
"""
