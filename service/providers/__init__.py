"""Upstream providers: one adapter per wire format, behind one interface (base.py)."""
