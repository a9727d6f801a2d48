#!/usr/bin/env python3
"""Transformers' prefill and decode speed on the GPU, for the same table as cmd/bench.

Run on the GPU machine (it has torch and transformers):  python3 scripts/gpu/hf_bench.py MODEL_DIR 1024,4096,8192 64
Prompts are the same synthetic token ids as cmd/bench (100 + i*7919 mod (vocab-200)); bf16, SDPA attention,
batch 1, a KV-cache decode loop of greedy tokens; the median of 3 timed runs after one warm-up. The prefill
computes the LM head for the last position only (logits_to_keep=1, as generate() does). Also prints the peak
GPU memory (torch.cuda.max_memory_allocated) per length.
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
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype, attn_implementation="sdpa")
else:
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, attn_implementation="sdpa").cuda()
model.eval()
vocab = model.config.vocab_size
print(f"<!-- transformers, torch {torch.__version__}, {torch.cuda.get_device_name()} -->")
c = model.config
hd = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
per_layer = c.hidden_size * hd * (c.num_attention_heads * 2 + 2 * c.num_key_value_heads) + 3 * c.hidden_size * c.intermediate_size

def prefill_flops(n):  # the same count as cmd/bench (llama.Runner.PrefillFLOPs)
    return 2 * n * per_layer * c.num_hidden_layers + 2 * c.hidden_size * vocab + 2 * n * n * hd * c.num_attention_heads * c.num_hidden_layers

for n in lens:
    ids = torch.tensor([[100 + (i * 7919) % (vocab - 200) for i in range(n)]], device="cuda")
    pre, dec = [], []
    torch.cuda.reset_peak_memory_stats()
    for rep in range(4):
        with torch.no_grad():
            torch.cuda.synchronize(); t0 = time.perf_counter()
            out = model(ids, use_cache=True, logits_to_keep=1)  # as generate() does: LM head on the last position only
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
    peak = torch.cuda.max_memory_allocated() / 2**30
    print(f"| {label} | transformers | {str(dtype).split('.')[-1]} | {n} | {n/p:.0f} | {p:.3f} | {prefill_flops(n)/p/1e12:.1f} | {d*1e3:.2f} | {1/d:.1f} | | | {peak:.1f} |", flush=True)
