"""Tests for catsdogs: one folder per stage of the pipeline, as in the package."""
