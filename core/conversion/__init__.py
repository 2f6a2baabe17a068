"""Conversion: the shared ANE PyTorch modules every family's weights map onto, the decoder step modules, and
the default trace/convert/postprocess plugin. May import the host's job, errors, hookspecs and the layouts' contracts."""
