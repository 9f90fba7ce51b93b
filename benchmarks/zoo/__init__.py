"""The built-in models: training, cards, the HyperMorph curve, synth2d across contrasts."""
