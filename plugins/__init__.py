"""The built-in model families, one subpackage each (``wconv.plugins.<family>``), registered through the ``wconv``
entry-point group like any third-party plugin; each imports only the public ``wconv`` API."""
