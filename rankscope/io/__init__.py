"""Reading and writing what rankscope does not compute: checkpoints, adapters, peft configs, result folders."""
