"""The built-in demo: the toy world, the shipped tiny base model, the demo run and its stage measurements."""
