"""Drivers: the BareMetalDriver and its pluggable interfaces (power, deploy, vif)."""
