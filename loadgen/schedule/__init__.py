"""WHEN it is sent: arrival processes, the trace of due times fixed before the clock, run length."""
