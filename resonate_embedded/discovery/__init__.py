"""Finding servers and being found by them (mDNS / DNS-SD)."""
