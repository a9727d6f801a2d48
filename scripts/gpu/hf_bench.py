#!/usr/bin/env python3
"""Transformers' prefill and decode speed on the GPU, for the same table as cmd/bench.

Run on the GPU machine (it has torch and transformers):  python3 scripts/gpu/hf_bench.py MODEL_DIR 1024,4096,8192 64
Prompts are the same synthetic token ids as cmd/bench (100 + i*7919 mod (vocab-200)); bf16, SDPA attention,
batch 1, a KV-cache decode loop of greedy tokens; the median of 3 timed runs after one warm-up.
"""
import statistics, sys, time
import torch
from transformers import AutoModelForCausalLM

model_dir = sys.argv[1]
lens = [int(x) for x in sys.argv[2].split(",")]
decode = int(sys.argv[3]) if len(sys.argv) > 3 else 64
dtype = torch.bfloat16 if (len(sys.argv) <= 4 or sys.argv[4] == "bf16") else torch.float32
label = sys.argv[5] if len(sys.argv) > 5 else model_dir.rstrip("/").split("/")[-1]
random_weights = len(sys.argv) > 6 and sys.argv[6] == "random"

if random_weights:
    from transformers import AutoConfig
    cfg = AutoConfig.from_pretrained(model_dir)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(cfg, torch_dtype=dtype, attn_implementation="sdpa")
else:
    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=dtype, attn_implementation="sdpa").cuda()
model.eval()
vocab = model.config.vocab_size
print(f"<!-- transformers, torch {torch.__version__}, {torch.cuda.get_device_name()} -->")
for n in lens:
    ids = torch.tensor([[100 + (i * 7919) % (vocab - 200) for i in range(n)]], device="cuda")
    pre, dec = [], []
    for rep in range(4):
        with torch.no_grad():
            torch.cuda.synchronize(); t0 = time.perf_counter()
            out = model(ids, use_cache=True)
            torch.cuda.synchronize(); p = time.perf_counter() - t0
            past = out.past_key_values
            tok = out.logits[:, -1:].argmax(-1)
            torch.cuda.synchronize(); t1 = time.perf_counter()
            for _ in range(decode):
                out = model(tok, past_key_values=past, use_cache=True)
                past = out.past_key_values
                tok = out.logits[:, -1:].argmax(-1)
            torch.cuda.synchronize(); d = (time.perf_counter() - t1) / decode
        if rep:
            pre.append(p); dec.append(d)
    p, d = statistics.median(pre), statistics.median(dec)
    print(f"| {label} | transformers | {str(dtype).split('.')[-1]} | {n} | {n/p:.0f} | {p:.3f} | {d*1e3:.2f} | {1/d:.1f} |")
