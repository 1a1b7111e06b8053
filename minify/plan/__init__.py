"""Plan: what the image holds and why (the ImagePlan), with presets, packages, traces and app runtimes."""
