"""WHAT is sent: prompts with known token counts, datasets, traces, prefixes, conversations."""
