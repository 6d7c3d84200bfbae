"""Tests for catsdogs.study."""
