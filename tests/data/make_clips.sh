#!/bin/sh
# Regenerate the English speech clips (16 kHz mono s16 wav); keep clips.json in step with the sentences here.
# Needs espeak-ng (1.51 made the committed files) and sox (14.4.2); -D turns off dither so output is repeatable.
set -eu
cd "$(dirname "$0")"
make_clip() {  # make_clip NAME WORDS_PER_MINUTE SENTENCE
    espeak-ng -v en-us -s "$2" -w "$1_22k.wav" "$3"
    sox "$1_22k.wav" -D -r 16000 -c 1 -b 16 "$1.wav"
    rm "$1_22k.wav"
}
make_clip clip1 120 "The quick brown fox jumps over the lazy dog."
make_clip clip2 150 "She sells sea shells by the sea shore. Please call Stella and ask her to bring these things with her from the store."
make_clip clip3 150 "It is a sunny day today. We will walk to the park and have lunch with our friends."
