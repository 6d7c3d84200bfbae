"""catsdogs: train, evaluate and explain a cat-vs-dog image classifier."""

__version__ = "0.1.0"
