"""The switchboard command-line entry point."""
