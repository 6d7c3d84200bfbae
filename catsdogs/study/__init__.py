"""The optimizer study: train every optimizer alike, test each run, report with uncertainty."""
