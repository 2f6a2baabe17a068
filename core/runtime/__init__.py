"""Running converted models: the numpy ML-program evaluator, Core ML on macOS, audio and log-mel input,
greedy decoding on the host, long-form transcription and openai-whisper's fp32 reference. May import the host's job and errors, and contracts."""
