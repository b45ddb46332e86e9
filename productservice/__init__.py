"""ProductService (port 8103). Scenario 3 (fan-out): product changes go to the `product_updates` exchange."""
