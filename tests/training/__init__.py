"""Tests for catsdogs.training."""
