"""Training a model: settings, models, optimizers, schedules, hardware, the loop, checkpoints and run folders."""
