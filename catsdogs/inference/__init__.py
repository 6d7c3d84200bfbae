"""Using a trained model: evaluate it, predict photos, explain its decisions, plot its curves."""
