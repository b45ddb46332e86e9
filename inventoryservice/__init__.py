"""InventoryService (port 8110). Scenario 5 (saga participant): stock reservations and their compensation."""
