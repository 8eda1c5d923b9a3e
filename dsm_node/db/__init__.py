"""Database access: schema (models), engine/session set-up (engine) and migrations."""
