"""Pure core: protocol state machines and codecs. No IO, no clocks, no randomness."""
