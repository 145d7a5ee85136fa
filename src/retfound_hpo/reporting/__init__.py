"""export-report's concept: the study as summary_report.md and plots (PNG + HTML)."""
