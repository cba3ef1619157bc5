"""Online continual-learning methods that plug into the engine (replay at stage 0, extra loss at the last)."""
