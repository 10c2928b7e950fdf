"""steptime model: ModelConfig, the two transformer families, closed-form costs (no torch)."""
