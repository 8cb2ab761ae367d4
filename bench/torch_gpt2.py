# torch_gpt2.py: a PyTorch (eager, CPU) baseline that trains the same model as
# models/gpt.graph -- pre-LN GPT-2 with learned positions, separate q/k/v
# projections, explicit causal softmax attention, tanh-GELU MLP, a tied output
# head and mean cross-entropy -- with AdamW on random tokens, and reports the
# median step time over the steps after the first.
#
#   python3 bench/torch_gpt2.py --preset gpt2-124m --batch 4 --seq 256 \
#       --steps 6 --precision fp32 --threads 2 [--sdpa] [--device cuda]
#
# --device cuda trains on the first GPU (step times measured after
# torch.cuda.synchronize; exit 77 with "SKIPPED: ..." where torch sees no GPU).
#
# --precision bf16 runs forward and loss under torch.autocast(bfloat16) with
# fp32 master weights; --sdpa swaps the explicit attention (as carve computes
# it) for F.scaled_dot_product_attention(is_causal=True).
import argparse
import math
import statistics
import time

import torch
import torch.nn.functional as F

# the graph's default dims and its presets (models/gpt.graph)
DEFAULTS = dict(batch=8, seq=1024, vocab=50304, hidden=768, heads=12, layers=12)
PRESETS = {
    "gpt-tiny": dict(batch=16, seq=64, vocab=256, hidden=128, heads=4, layers=2),
    "gpt-small": dict(batch=8, seq=128, vocab=256, hidden=256, heads=8, layers=4),
    "gpt2-124m": dict(seq=1024, vocab=50257, hidden=768, heads=12, layers=12),
    "gpt2-350m": dict(seq=1024, vocab=50257, hidden=1024, heads=16, layers=24),
    "gpt2-774m": dict(seq=1024, vocab=50257, hidden=1280, heads=20, layers=36),
    "gpt2-1.5b": dict(seq=1024, vocab=50257, hidden=1600, heads=25, layers=48),
}
LN_EPS = 1e-5  # carve's layernorm default


def init_params(d, gen, device="cpu"):
    """The graph's parameters, in its shapes, initialised as it declares."""
    h, n, hd, ffn, L = d["hidden"], d["heads"], d["hidden"] // d["heads"], 4 * d["hidden"], d["layers"]
    proj_std = 0.02 / math.sqrt(2 * L)

    def normal(shape, std):
        return (torch.randn(*shape, generator=gen) * std).to(device).requires_grad_()

    def const(shape, v):
        return torch.full(shape, float(v), device=device).requires_grad_()

    p = {"wte": normal((d["vocab"], h), 0.02), "wpe": normal((d["seq"], h), 0.01), "layers": []}
    for _ in range(L):
        p["layers"].append({
            "ln1_g": const((h,), 1), "ln1_b": const((h,), 0),
            "w_q": normal((h, n, hd), 0.02), "w_k": normal((h, n, hd), 0.02), "w_v": normal((h, n, hd), 0.02),
            "b_q": const((n, hd), 0), "b_k": const((n, hd), 0), "b_v": const((n, hd), 0),
            "w_o": normal((n, hd, h), proj_std), "b_o": const((h,), 0),
            "ln2_g": const((h,), 1), "ln2_b": const((h,), 0),
            "w_fc": normal((h, ffn), 0.02), "b_fc": const((ffn,), 0),
            "w_proj": normal((ffn, h), proj_std), "b_proj": const((h,), 0),
        })
    p["lnf_g"], p["lnf_b"] = const((h,), 1), const((h,), 0)
    return p


def all_params(p):
    out = [p["wte"], p["wpe"]]
    for lp in p["layers"]:
        out += list(lp.values())
    return out + [p["lnf_g"], p["lnf_b"]]


def forward_loss(p, tokens, labels, d, sdpa):
    B, S = tokens.shape
    h, n = d["hidden"], d["heads"]
    hd = h // n
    x = F.embedding(tokens, p["wte"]) + p["wpe"][:S]
    mask = None if sdpa else torch.ones(S, S, dtype=torch.bool, device=tokens.device).triu_(1)
    for lp in p["layers"]:
        a = F.layer_norm(x, (h,), lp["ln1_g"], lp["ln1_b"], LN_EPS)
        # einsum("b s h, h n d -> b s n d") + b, as a plain matmul
        q = (a @ lp["w_q"].reshape(h, h)).view(B, S, n, hd) + lp["b_q"]
        k = (a @ lp["w_k"].reshape(h, h)).view(B, S, n, hd) + lp["b_k"]
        v = (a @ lp["w_v"].reshape(h, h)).view(B, S, n, hd) + lp["b_v"]
        if sdpa:
            o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                               is_causal=True).transpose(1, 2)
        else:
            att = torch.einsum("bsnd,btnd->bnst", q, k) / math.sqrt(hd)
            att = torch.softmax(att.masked_fill(mask, float("-inf")), dim=-1)
            o = torch.einsum("bnst,btnd->bsnd", att, v)
        x = x + o.reshape(B, S, h) @ lp["w_o"].reshape(h, h) + lp["b_o"]
        a = F.layer_norm(x, (h,), lp["ln2_g"], lp["ln2_b"], LN_EPS)
        f = F.gelu(a @ lp["w_fc"] + lp["b_fc"], approximate="tanh")
        x = x + f @ lp["w_proj"] + lp["b_proj"]
    x = F.layer_norm(x, (h,), p["lnf_g"], p["lnf_b"], LN_EPS)
    logits = x @ p["wte"].t()  # tied head: einsum("b s h, v h -> b s v")
    return F.cross_entropy(logits.reshape(B * S, -1), labels.reshape(B * S))


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--preset", default="gpt2-124m", choices=sorted(PRESETS))
    ap.add_argument("--batch", type=int)
    ap.add_argument("--seq", type=int)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--sdpa", action="store_true", help="F.scaled_dot_product_attention instead of explicit attention")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("SKIPPED: torch sees no GPU", flush=True)
        raise SystemExit(77)

    d = dict(DEFAULTS, **PRESETS[args.preset])
    if args.batch:
        d["batch"] = args.batch
    if args.seq:
        d["seq"] = args.seq
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(args.seed)

    p = init_params(d, gen, args.device)
    params = all_params(p)
    decay = [t for t in params if t.dim() >= 2]
    no_decay = [t for t in params if t.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=3e-4, betas=(0.9, 0.999), eps=1e-8)
    B, S = d["batch"], d["seq"]
    print(f"# torch {torch.__version__} {args.preset}: vocab {d['vocab']} hidden {d['hidden']} heads {d['heads']} "
          f"layers {d['layers']}, {sum(t.numel() for t in params)} parameters, {args.precision}, "
          f"{'sdpa' if args.sdpa else 'explicit'} attention, "
          f"{torch.cuda.get_device_name(0) if args.device == 'cuda' else str(args.threads) + ' threads'}", flush=True)

    times = []
    for step in range(args.steps):
        # a random sequence per row; the labels are it shifted by one
        seq = torch.randint(0, d["vocab"], (B, S + 1), generator=gen)
        tokens, labels = seq[:, :-1].to(args.device), seq[:, 1:].to(args.device)
        if args.device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast(args.device, dtype=torch.bfloat16, enabled=args.precision == "bf16"):
            loss = forward_loss(p, tokens, labels, d, args.sdpa)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if args.device == "cuda":
            torch.cuda.synchronize()
        ms = (time.perf_counter() - t0) * 1e3
        times.append(ms)
        print(f"step {step} loss {loss.item():.4f} ms {ms:.1f}", flush=True)

    rest = times[1:] or times
    med = statistics.median_low(rest)  # the lower middle for an even count, as bench/bench_gpt2.sh
    print(f"torch {args.precision} batch {B} seq {S}: median {med:.1f} ms/step (after the first), "
          f"{B * S / med * 1e3:.0f} tok/s")


if __name__ == "__main__":
    main()
