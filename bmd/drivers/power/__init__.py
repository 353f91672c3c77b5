"""Power interfaces: talk to a node's BMC (IPMI, Redfish, fake)."""
