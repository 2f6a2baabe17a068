"""Verification: the default verify plugin (one check per artifact kind), metrics and gates, the fp32
references, and `wconv verify` for saved artifacts. May import the host, the runtime and the layouts' contracts."""
