"""Run the `rwkv` pip package's RWKV-7 on jobs from a JSON file; save the logits (a script, not a
test: it is started by rwkv7_helpers.run_reference with RWKV_V7_ON=1 in a fresh interpreter).

usage: python rwkv7_reference.py JOBS.json OUT.pt
"""

import json
import os
import sys

import torch

assert os.environ.get("RWKV_V7_ON") == "1", "set RWKV_V7_ON=1 before the rwkv package is imported"
torch.set_num_threads(1)

from rwkv.model import RWKV  # after the environment check, on purpose: the import reads RWKV_V7_ON


def main(job_path: str, out_path: str) -> None:
    with open(job_path) as f:
        jobs = json.load(f)
    results = []
    for job in jobs:
        tokens, cut = job["tokens"], job["cut"]
        res = {}
        for strategy in job["strategies"]:
            # the package appends ".pth" itself
            model = RWKV(model=job["model"].removesuffix(".pth"), strategy=strategy)
            logits, _ = model.forward(list(tokens), None, full_output=True)
            res[f"{strategy}/prefill"] = logits.float().clone()
            out, state = model.forward(list(tokens[:cut]), None, full_output=True)
            rows = [out.float().view(cut, -1).clone()]
            for t in tokens[cut:]:
                out, state = model.forward([t], state)
                rows.append(out.float().view(1, -1).clone())
            res[f"{strategy}/carried"] = torch.cat(rows)
        results.append(res)
    torch.save(results, out_path)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
