"""Command line: the ``rankscope`` click group; each command lives in the module named after it.

Errors caused by the input print one line, ``Error: <message>``, and exit with status 2; add
``--debug`` (before or after the command) for the traceback.  Importing the CLI loads no torch,
transformers or peft: every command imports its analysis when it runs.
"""

from __future__ import annotations

import os

# Before anything loads torch's libgomp: idle OpenMP workers sleep instead of spinning.  On a shared
# 2-core machine spinning made a MiniLM training step 10x slower; on an idle one it costs nothing measurable.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import click  # noqa: E402

from ..version import __version__  # noqa: E402
from .compare import compare_adapters_cmd, compare_cmd  # noqa: E402
from .extract import extract_cmd  # noqa: E402
from .intrinsic_dim import intrinsic_dim_cmd  # noqa: E402
from .lora import lora_cmd  # noqa: E402
from .plot import plot_cmd  # noqa: E402
from .probe import probe_cmd  # noqa: E402
from .recommend import recommend_cmd  # noqa: E402
from .report import report_cmd  # noqa: E402
from .resize import resize_cmd  # noqa: E402
from .spectrum import spectrum_cmd  # noqa: E402
from .train import train_cmd  # noqa: E402


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="rankscope")
@click.option("--debug", is_flag=True, help="Show the full traceback on errors.")
def main(debug: bool) -> None:
    """rankscope: how low-rank is fine-tuning? Measured from the weights.

    CHECKPOINT arguments accept a local Hugging Face folder, a .safetensors/.bin file, a Hub id
    (org/name[@revision]) or bundled:minilm-base / bundled:minilm-finetuned.
    """


COMMANDS = (spectrum_cmd, lora_cmd, compare_cmd, compare_adapters_cmd, train_cmd, plot_cmd, recommend_cmd, extract_cmd,
            intrinsic_dim_cmd, probe_cmd, resize_cmd, report_cmd)
for _command in COMMANDS:
    main.add_command(_command)

if __name__ == "__main__":
    main()
