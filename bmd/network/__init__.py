"""Network plumbing for VIFs: the OpenFlow controller's vifinfo client, its fake, and Open vSwitch."""
