"""Shared pytest set-up: TensorFlow is configured by tfcompat before any test imports it."""
import tfcompat  # noqa: F401  (must come first: sets TF_USE_LEGACY_KERAS)
