"""Hand-fused training steps for particular networks, used where they apply (see cnnlab.train.steps)."""
