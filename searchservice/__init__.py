"""SearchService (port 8108). Scenario 3 (fan-out consumer): the product search index."""
