"""UserService (port 8101): registers users and announces them with `UserRegistered` (Scenario 1)."""
