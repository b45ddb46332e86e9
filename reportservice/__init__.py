"""ReportService (port 8104). Scenario 4 (CPU job offloading): report jobs worked outside the HTTP process."""
