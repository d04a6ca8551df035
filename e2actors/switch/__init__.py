"""The switch (E2D): classifier, load balancers, bytestreams, ports."""
