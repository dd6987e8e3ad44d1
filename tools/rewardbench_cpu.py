"""RewardBench's own `rewardbench` command (rewardbench==0.1.4) on a machine without CUDA.

    .venv-rewardbench/bin/python tools/rewardbench_cpu.py --model DIR --not_quantized --torch_dtype float32 ...

Its pipeline moves every tokenised batch with a hard-coded `.to("cuda")`, which fails on a CPU
build of torch. This sends that one call to the CPU when no GPU is present and then runs the
package's own entry point with the same arguments, so the rest of RewardBench runs as shipped.
"""

import sys

import torch
from transformers.tokenization_utils_base import BatchEncoding

if not torch.cuda.is_available():
    _to = BatchEncoding.to

    def _to_cpu(self, device, *args, **kwargs):
        return _to(self, "cpu" if str(device).startswith("cuda") else device, *args, **kwargs)

    BatchEncoding.to = _to_cpu

from rewardbench.rewardbench import main  # noqa: E402  (the `rewardbench` console script)

if __name__ == "__main__":
    sys.argv[0] = "rewardbench"
    sys.exit(main())
