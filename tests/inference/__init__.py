"""Tests for catsdogs.inference."""
