"""Workflows: what uses training, inference and reporting together — plan a dataset, train a fold in its run
folder, the final validation and post-processing choice, cross-validation, ``best``, the demo."""
