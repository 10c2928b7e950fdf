"""steptime model: ModelConfig, the Llama-style transformer, and closed-form costs. No torch at import."""
