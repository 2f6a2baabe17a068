"""Compression: ``--compress`` specs, applying them with ``coremltools.optimize.coreml``, the mixed-bit
sensitivity search on real speech, and the default compress plugin. May import the host, conversion, runtime and verify."""
