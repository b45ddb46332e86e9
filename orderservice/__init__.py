"""OrderService (port 8105). Scenario 5 (saga choreography): orders and their saga timeline."""
