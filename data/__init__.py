"""Data layer of UnMask: knowledge base, synthetic data set, COCO part data sets and loaders.

This package depends on nothing else of the project (apart from ``tfcompat`` for the modules
that use TensorFlow), so every other package may import it.
"""
