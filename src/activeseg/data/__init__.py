"""Datasets: discovery, validation, reading, preprocessing and synthetic phantoms."""
