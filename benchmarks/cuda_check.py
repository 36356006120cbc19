"""CUDA parity check against the official fixtures (run on a GPU machine; CI never needs it).

    python benchmarks/cuda_check.py [--json out.json]

1. Modules in fp32 on CUDA (TF32 off) against the fp32 goldens: expected <= 1e-4.
2. Generation as the release runs on CUDA (fp32 weights, bf16 autocast) against the fp32_dit
   goldens: latents/logits within the bf16 tolerances of golden.json, and token agreement.
3. Generation with bf16 weights on CUDA: same comparisons.

Generation runs twice each: the default fast path (static KV cache, modulation table, fused commits,
CUDA graphs) and the eager one (``fast=False``); both must pass.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from cola_core import load_pretrained
from cola_core.attention import pad_rows, unpad_rows
from cola_core.generate import BlockwiseSampler, GenerationConfig

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "visible_a"


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.detach().float().cpu() - b.float()).abs().max().item()


@torch.no_grad()
def module_parity(golden: dict, device: str) -> dict:
    model = load_pretrained(FIXTURE, device=device)
    out = {}
    means, _ = model.vae.encode([golden[f"prompt.{i}.ids_padded"].to(device) for i in range(3)])
    out["vae_encode_mean"] = max(max_diff(means[i], golden[f"vae.encode.{i}.mean"]) for i in range(3))
    lengths = golden["vae.decode_full.txt_shape"].view(-1).tolist()
    z, _ = pad_rows(golden["vae.decode_full.z"].to(device), lengths)
    logits = model.vae.decode_latents(z, torch.tensor(lengths, device=device))
    out["vae_decode_logits"] = max_diff(unpad_rows(logits, lengths), golden["vae.decode_full.logits"][0])
    lengths = golden["dit.multi.txt_shape"].view(-1).tolist()
    x, _ = pad_rows(golden["dit.multi.txt"].to(device), lengths)
    t, _ = pad_rows(golden["dit.multi.timestep"][:, None].to(device), lengths)
    v = model.dit(x, t[..., 0], torch.tensor(lengths, device=device))
    out["dit_multi"] = max_diff(unpad_rows(v, lengths), golden["dit.multi.out_fp32"])
    return out


def generation_parity(golden: dict, meta: dict, device: str, dtype: str | None, fast: bool = True) -> dict:
    model = load_pretrained(FIXTURE, device=device, dtype=dtype)
    gen = meta["generate"]
    results = {}
    for tag, run in gen["runs"].items():
        config = GenerationConfig(steps=run["timestep_num"], guidance=run["guidance_scale"],
                                  max_new_tokens=gen["call"]["max_new_tokens"], seed=1234, stop_at_eos=False,
                                  noise_device="cpu")   # the goldens drew their noise on CPU
        sampler = BlockwiseSampler(model, [p["question"] for p in gen["prompts"]], config, fast=fast)
        latents, logits = [], []
        for event, state in sampler.events():
            if event == "block_end":
                latents.append(state.z.reshape(-1, state.z.shape[-1]).float().cpu())
            elif event == "decoded":
                logits.append(state.logits.float().cpu())
        ref = run["flavors"]["fp32_dit"]["tokens_untrimmed"]
        got = [r.untrimmed_ids for r in sampler.result()]
        agree = sum(a == b for x, y in zip(got, ref) for a, b in zip(x, y)) / sum(len(x) for x in ref)
        results[tag] = {"block_latent": max_diff(torch.stack(latents), golden[f"gen.{tag}.fp32_dit.block_latent"]),
                        "block_logits": max_diff(torch.stack(logits), golden[f"gen.{tag}.fp32_dit.block_logits"]),
                        "token_agreement": agree}
    return results


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json")
    parser.add_argument("--device", default="cuda", help="cpu gives a dry run of the script itself")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("CUDA is not available", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    golden = load_file(str(FIXTURE / "golden.safetensors"))
    meta = json.loads((FIXTURE / "golden.json").read_text())
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    report = {"device": name, "torch": torch.__version__,
              "modules_fp32": module_parity(golden, args.device),
              "generate_fp32_weights_bf16_autocast": generation_parity(golden, meta, args.device, None),
              "generate_bf16_weights": generation_parity(golden, meta, args.device, "bfloat16"),
              "generate_fp32_weights_bf16_autocast_eager": generation_parity(golden, meta, args.device, None, False),
              "generate_bf16_weights_eager": generation_parity(golden, meta, args.device, "bfloat16", False)}
    print(json.dumps(report, indent=2))
    ok = all(v < 1e-4 for v in report["modules_fp32"].values())
    # No CUDA goldens exist; bounds are golden.json's bf16 ones, widened for the logits because CUDA
    # autocast also runs the VAE in bf16 (the reference's CPU bf16 flavour keeps it fp32).
    for key in ("generate_fp32_weights_bf16_autocast", "generate_bf16_weights",
                "generate_fp32_weights_bf16_autocast_eager", "generate_bf16_weights_eager"):
        ok &= all(r["block_latent"] < 0.1 and r["block_logits"] < 0.5 and r["token_agreement"] >= 0.85
                  for r in report[key].values())
    print("CUDA CHECK", "PASSED" if ok else "FAILED")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
