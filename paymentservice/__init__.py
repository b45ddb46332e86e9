"""PaymentService (port 8102). Scenario 2 (background payments) and the payment step of the Scenario 5 saga."""
