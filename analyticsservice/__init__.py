"""AnalyticsService (port 8106). Scenarios 3 and 6: counts product updates; ingests clicks through a queue."""
