"""Periodic loops (one module each) and the runner that schedules them."""
