"""Developer tooling: the fleet's process list, local provisioning, and generators for the
files derived from the code (Procfile). Not imported by the services."""
