"""Tests for catsdogs.data."""
