"""From a study's store to tables, figures and report.html (torch-free)."""
