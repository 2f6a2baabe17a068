"""Inspecting converted models without running them: an ML program read from its spec (`program`), the static
ANE lint (`lint`), contents and memory (`contents`), the device table (`devices`, `devices.json`), Core ML's
own placement on macOS (`compute_plan`) and the report of `wconv inspect` (`report`). May import the host's
errors, files, manifest and layouts (the ggml header reader); the pipeline imports it for the manifest's lint summary."""
