"""Thin HTTP handlers; the work happens in service.gateway and service.ledger."""
