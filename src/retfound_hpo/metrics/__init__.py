"""Pure metric functions: grading metrics, the operating point and its threshold rules,
intervals (proportions, cluster bootstrap, seeds, DeLong), calibration, PPV/NPV."""
