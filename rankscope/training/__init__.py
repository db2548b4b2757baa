"""Training for classification: data (tasks, splits), engine (the loop), models (build, save), lora (options)."""
