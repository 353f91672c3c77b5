"""Console interfaces: where bmd reads a node's serial console (``driver.console_interface``)."""
