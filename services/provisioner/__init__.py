"""The provisioner: sandbox desktops leased per session, from a warm pool, on Docker or natively."""
