"""Compression: ``--compress`` specs, applying them with ``coremltools.optimize.coreml`` (and to Core AI assets with
coreai-opt), the mixed-bit sensitivity search on real speech, and the compress plugins. May import the host, conversion, runtime and verify."""
