"""CacheService (port 8109). Scenario 3 (fan-out consumer): the product cache."""
