"""Building the firewall's models from M and a small clean set, and exporting them."""
