"""EmailService (port 8107): sends the welcome email for every `UserRegistered` (Scenario 1)."""
