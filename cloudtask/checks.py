"""System checks (owner: core helper; placeholder until written)."""
