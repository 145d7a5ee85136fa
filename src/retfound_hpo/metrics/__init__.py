"""Pure metric functions: grading metrics, bootstrap intervals, operating point, calibration."""
