"""Inputs for SAFE: prompts through the base's own tokenizer / image processor (or the built-in
format), audio decode / resample / validate, the audio front ends and the policy's audio preview."""
