"""The pipeline of every command that writes: source, analyse, gather, plan, materialise, verify, write."""
