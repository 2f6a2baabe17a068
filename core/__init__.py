"""wconv: convert Whisper models to Core ML."""
