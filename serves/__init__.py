"""Model serves: rows in the database, serves.toml import/export, the docker compose lifecycle."""
