"""The messaging core every service of the fleet shares: settings, events, topology, broker,
base consumer, transactional outbox, database helpers and the service factory."""
