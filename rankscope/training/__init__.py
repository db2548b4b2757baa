"""The training engine: tasks and data, the loop, model building."""
