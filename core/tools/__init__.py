"""Commands built on the pipeline: batches, transcription, plugin listings, the real sample weights and
random-weight checkpoints. May import anything in wconv; nothing in wconv's host imports them."""
