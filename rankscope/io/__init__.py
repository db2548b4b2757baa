"""Reading and writing what rankscope does not compute: checkpoints, the Hub, adapters, peft configs, result folders."""
