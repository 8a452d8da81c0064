"""The update's attention and LoRA layers on their own, at the 0.5B's shapes: torch's kernel or
peft's steps against ``optim.score_attention`` and ``optim.inplace_lora``.

* attention (forward and backward, bf16, 14 query heads over 2 key/value heads, 64 dims, a
  left-padded causal mask): torch's ``scaled_dot_product_attention`` (the flash kernel on a CPU)
  against :class:`tokenrl.attention.ScoreAttention` as the update calls it (rows split into
  blocks), with each one's relative error against float64 for the output and the three input
  gradients;
* a LoRA layer (forward and backward, bf16 base weight, fp32 rank-16 adapter, the trainer's
  scaling 2): the base product alone, peft's steps (``result + lora_B(lora_A(x)) * scaling``),
  the same in place (``optim.inplace_lora``) and one ``addmm`` (tried, not kept), and whether
  each agrees bitwise with peft at scaling 2 and at 8/3.

Best of ``--repeats`` after a warm-up, milliseconds, in one process:

    python benchmarks/update_kernels.py --threads 2 --json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from benchmarks.step_bounds import best_seconds  # noqa: E402
from tokenrl.attention import blocked_score_attention  # noqa: E402
from tokenrl.machine import machine_info  # noqa: E402

ATTENTION = {
    # name: (rows, queries, keys, left padding of each row)
    "T-SPMO prompts 3 x 98": (3, 98, 98, [0, 5, 12]),
    "T-SPMO completions 13 x 6 after 98": (13, 6, 104, [0] * 5 + [5] * 4 + [12] * 4),
    "GRPO completions 32 x 57 after 113": (32, 57, 170, [0, 5, 12, 20] * 8),
    "16 queries x 300 keys": (32, 16, 300, [0, 50] * 16),
    "64 x 300": (8, 64, 300, [0, 50] * 4),
    "200 x 300": (32, 200, 300, [0, 50] * 16),
    "300 x 300": (4, 300, 300, [0, 9, 20, 50]),
}
LORA = {"gate/up 896 -> 4864": (896, 4864), "down 4864 -> 896": (4864, 896), "q/o 896 -> 896": (896, 896)}  # fmt: skip


def best_ms(fn, repeats: int) -> float:
    return best_seconds(fn, "cpu", repeats) * 1e3


def _flash(q, k, v, mask):
    g = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.125)


def _scored(q, k, v, mask):
    return blocked_score_attention(q, k, v, mask, 0.125)  # as the update runs it, in blocks


def attention(rows: int, lq: int, lk: int, pads: list[int], repeats: int) -> dict:
    g = torch.Generator().manual_seed(0)
    q = (torch.randn(rows, 14, lq, 64, generator=g) * 1.5).bfloat16()
    k, v = (torch.randn(rows, 2, lk, 64, generator=g).bfloat16() for _ in range(2))
    grad = torch.randn(rows, 14, lq, 64, generator=g).bfloat16()
    keys, queries = torch.arange(lk), torch.arange(lk - lq, lk)
    causal = (keys[None, :] <= queries[:, None])[None, None]  # [1, 1, lq, lk]
    mask = causal & (keys >= torch.tensor(pads)[:, None])[:, None, None, :]  # [rows, 1, lq, lk]

    def run(fn, dtype=torch.bfloat16):
        qq, kk, vv = (x.detach().to(dtype, copy=True).requires_grad_() for x in (q, k, v))
        out = fn(qq, kk, vv, mask)
        out.backward(grad.to(dtype))
        return [x.detach().double() for x in (out, qq.grad, kk.grad, vv.grad)]

    exact = run(lambda *a: _flash(*a).nan_to_num(), torch.float64)
    some = mask.any(-1, keepdim=True).expand(-1, 14, -1, 64)  # queries with a key
    out: dict = {"positions": lq * lk}
    for name, fn in (("flash", _flash), ("score", _scored)):
        got = run(fn)
        got[0], ref0 = got[0][some], exact[0][some]
        errs = [
            float((a - b).norm() / b.norm()) for a, b in zip(got, [ref0, *exact[1:]], strict=True)
        ]
        out[name] = {"ms": best_ms(lambda fn=fn: run(fn), repeats),
                     "rel_err_out_dq_dk_dv": errs}  # fmt: skip
    out["speedup"] = out["flash"]["ms"] / out["score"]["ms"]
    return out


def lora(d_in: int, d_out: int, tokens: int, repeats: int) -> dict:
    g = torch.Generator().manual_seed(0)
    w = (torch.randn(d_out, d_in, generator=g) * 0.02).bfloat16()
    a = (torch.randn(16, d_in, generator=g) * 0.02).requires_grad_()
    b = (torch.randn(d_out, 16, generator=g) * 0.02).requires_grad_()
    x0, grad = torch.randn(tokens, d_in).bfloat16(), torch.randn(tokens, d_out).bfloat16()

    def ways(s: float) -> dict:
        return {
            "base": lambda x: F.linear(x, w),
            "peft": lambda x: (F.linear(x, w) + F.linear(F.linear(x.float(), a), b) * s).bfloat16(),
            "inplace": lambda x: F.linear(F.linear(x.float(), a), b).mul_(s).add_(F.linear(x, w)).bfloat16(),
            "addmm": lambda x: torch.addmm(F.linear(x, w).float(), F.linear(x.float(), a), b.t(),
                                           alpha=s).bfloat16(),
        }  # fmt: skip

    def run(fn):
        x = x0.clone().requires_grad_()
        a.grad = b.grad = None
        y = fn(x)
        y.backward(grad)
        return y, x.grad, a.grad, b.grad

    out: dict = {name: best_ms(lambda fn=fn: run(fn), repeats) for name, fn in ways(2.0).items()}
    for s in (2.0, 8 / 3):
        peft = run(ways(s)["peft"])
        for name in ("inplace", "addmm"):
            got = run(ways(s)[name])
            out[f"{name}_bitwise_peft_scaling_{s:.3g}"] = all(
                torch.equal(p, q) for p, q in zip(peft, got, strict=True)
            )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--tokens", type=int, default=420, help="LoRA rows (T-SPMO's 15 x 28)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    report = {
        "machine": machine_info(),
        "threads": args.threads,
        "attention": {n: attention(*s, args.repeats) for n, s in ATTENTION.items()},
        "lora": {n: lora(*s, args.tokens, args.repeats) for n, s in LORA.items()},
    }
    if args.json:
        print(json.dumps(report, indent=1))
        return
    print(
        "| attention | positions | flash ms | score ms | speed-up | rel. error flash / score (out, dq) |"
    )
    print("|---|---|---|---|---|---|")
    for n, r in report["attention"].items():
        fe, se = r["flash"]["rel_err_out_dq_dk_dv"], r["score"]["rel_err_out_dq_dk_dv"]
        print(f"| {n} | {r['positions']} | {r['flash']['ms']:.2f} | {r['score']['ms']:.2f} | "
              f"{r['speedup']:.2f}x | {fe[0]:.1e}, {fe[1]:.1e} / {se[0]:.1e}, {se[1]:.1e} |")  # fmt: skip
    print(f"\n| LoRA layer, {args.tokens} tokens | base ms | peft ms | in place ms | addmm ms |")
    print("|---|---|---|---|---|")
    for n, r in report["lora"].items():
        print(
            f"| {n} | {r['base']:.2f} | {r['peft']:.2f} | {r['inplace']:.2f} | {r['addmm']:.2f} |"
        )
    layers = list(report["lora"].values())
    bitwise = {k: all(r[k] for r in layers) for k in layers[0] if "bitwise" in k}
    print("bitwise peft:", bitwise)


if __name__ == "__main__":
    main()
