"""Workflows: training, evaluation and registration runs built on the core and the models."""
