"""Models of the dynamic loaders: pure functions over a target root."""
