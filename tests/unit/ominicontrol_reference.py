"""An independent implementation of OminiControl's spatial generate, written from SPEC.md
section 5 on a plain diffusers FluxPipeline whose transformer holds the LoRAs as peft adapters
(``load_lora_weights(..., adapter_name=<task>)``). It shares no code with the pack's engine or
samplers: every branch runs the diffusers modules itself, the LoRA of a branch is switched on by
setting peft's scaling (1 for the branch's adapter, 0 for every other one), attention is one
softmax per query branch over the keys its mask row allows.

Branches: text (T5 tokens, the target's timestep), target (timestep t, no adapter), one per
condition (t = 0, guidance 1.0, its task's adapter, a VAE posterior sample of its image, the
target's position ids). Mask: text and target see everything; condition i sees text, target and
itself. Sampling: Flux's sigmas 1 -> 1/steps with the dynamic shift, FlowMatch Euler.

RNG order (ours; OminiControl draws the condition samples from the global RNG): the initial
noise, then one posterior sample per condition in order, all from one CPU generator.
"""
from __future__ import annotations

import contextlib
import copy

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.models.embeddings import apply_rotary_emb
from diffusers.pipelines.flux.pipeline_flux import calculate_shift, retrieve_timesteps
from peft.tuners.lora import LoraLayer


@contextlib.contextmanager
def adapter_only(modules, name):
    """peft's scaling of every adapter on ``modules``: 1 for ``name``, 0 for the others."""
    layers = [m for m in modules if isinstance(m, LoraLayer)]
    saved = [dict(m.scaling) for m in layers]
    for m in layers:
        for a in m.scaling:
            m.scaling[a] = 1.0 if a == name else 0.0
    try:
        yield
    finally:
        for m, s in zip(layers, saved):
            m.scaling.update(s)


def _heads(x, heads):
    b, n, d = x.shape
    return x.view(b, n, heads, d // heads).transpose(1, 2)          # [B, H, N, Dh]


def _attend(queries, keys, values, mask):
    outs = []
    for i, q in enumerate(queries):
        ks = torch.cat([k for j, k in enumerate(keys) if mask[i][j]], dim=2)
        vs = torch.cat([v for j, v in enumerate(values) if mask[i][j]], dim=2)
        o = F.scaled_dot_product_attention(q, ks, vs)
        outs.append(o.transpose(1, 2).flatten(2))
    return outs


def double_block(block, text, images, tembs, adapters, ropes, mask):
    """text: [B, L, D] (branch 0); images: list of [B, N, D] (branches 1..)."""
    attn = block.attn
    t_norm, t_gate, t_shift2, t_scale2, t_gate2 = block.norm1_context(text, emb=tembs[0])
    qs, ks, vs = [_heads(attn.add_q_proj(t_norm), attn.heads), _heads(attn.add_k_proj(t_norm), attn.heads),
                  _heads(attn.add_v_proj(t_norm), attn.heads)]
    qs, ks, vs = [attn.norm_added_q(qs)], [attn.norm_added_k(ks)], [vs]
    mods = []
    for i, x in enumerate(images):
        with adapter_only((block.norm1.linear,), adapters[i + 1]):
            norm, *m = block.norm1(x, emb=tembs[i + 1])
        mods.append(m)
        with adapter_only((attn.to_q, attn.to_k, attn.to_v), adapters[i + 1]):
            q, k, v = attn.to_q(norm), attn.to_k(norm), attn.to_v(norm)
        qs.append(attn.norm_q(_heads(q, attn.heads)))
        ks.append(attn.norm_k(_heads(k, attn.heads)))
        vs.append(_heads(v, attn.heads))
    qs = [apply_rotary_emb(q, r) for q, r in zip(qs, ropes)]
    ks = [apply_rotary_emb(k, r) for k, r in zip(ks, ropes)]
    outs = _attend(qs, ks, vs, mask)
    text = text + t_gate.unsqueeze(1) * attn.to_add_out(outs[0])
    h = block.norm2_context(text) * (1 + t_scale2[:, None]) + t_shift2[:, None]
    text = text + t_gate2.unsqueeze(1) * block.ff_context(h)
    new = []
    for i, (x, (gate, shift2, scale2, gate2)) in enumerate(zip(images, mods)):
        with adapter_only((attn.to_out[0],), adapters[i + 1]):
            x = x + gate.unsqueeze(1) * attn.to_out[0](outs[i + 1])
        h = block.norm2(x) * (1 + scale2[:, None]) + shift2[:, None]
        with adapter_only((block.ff.net[2],), adapters[i + 1]):
            x = x + gate2.unsqueeze(1) * block.ff(h)
        new.append(x)
    return text, new


def single_block(block, xs, tembs, adapters, ropes, mask):
    """xs: every branch, text first; each branch's gate from its own tokens."""
    attn = block.attn
    qs, ks, vs, mlps, gates = [], [], [], [], []
    for i, x in enumerate(xs):
        with adapter_only((block.norm.linear, block.proj_mlp, attn.to_q, attn.to_k, attn.to_v), adapters[i]):
            norm, gate = block.norm(x, emb=tembs[i])
            mlps.append(block.act_mlp(block.proj_mlp(norm)))
            qs.append(attn.norm_q(_heads(attn.to_q(norm), attn.heads)))
            ks.append(attn.norm_k(_heads(attn.to_k(norm), attn.heads)))
            vs.append(_heads(attn.to_v(norm), attn.heads))
        gates.append(gate)
    qs = [apply_rotary_emb(q, r) for q, r in zip(qs, ropes)]
    ks = [apply_rotary_emb(k, r) for k, r in zip(ks, ropes)]
    outs = _attend(qs, ks, vs, mask)
    new = []
    for i, x in enumerate(xs):
        with adapter_only((block.proj_out,), adapters[i]):
            new.append(x + gates[i].unsqueeze(1) * block.proj_out(torch.cat([outs[i], mlps[i]], dim=2)))
    return new


def forward(tr, text, text_ids, images, image_ids, timesteps, guidances, pooled, adapters, mask):
    """The velocity of branch 1 (the target). adapters: one name (or None) per branch, text first."""
    xs = []
    for i, x in enumerate(images):
        with adapter_only((tr.x_embedder,), adapters[i + 1]):
            xs.append(tr.x_embedder(x))
    txt = tr.context_embedder(text)

    def temb(t, g):
        return (tr.time_text_embed(t * 1000, pooled) if g is None else
                tr.time_text_embed(t * 1000, g * 1000, pooled))

    tembs = [temb(t, g) for t, g in zip(timesteps, guidances)]
    ropes = [tr.pos_embed(ids) for ids in (text_ids, *image_ids)]
    for block in tr.transformer_blocks:
        txt, xs = double_block(block, txt, xs, tembs, adapters, ropes, mask)
    hs = [txt, *xs]
    for block in tr.single_transformer_blocks:
        hs = single_block(block, hs, tembs, adapters, ropes, mask)
    return tr.proj_out(tr.norm_out(hs[1], tembs[1]))


def ominicontrol_mask(n_conditions: int) -> torch.Tensor:
    n = 2 + n_conditions
    m = torch.ones(n, n, dtype=torch.bool)
    m[2:, 2:] = torch.eye(n_conditions, dtype=torch.bool)
    return m


@torch.no_grad()
def generate(pipe, prompt_embeds, pooled, text_ids, conditions, height, width, steps, guidance, seed):
    """Final packed latents [1, N, 64]. conditions: [(image [H, W, 3] in [0, 1], adapter name)]."""
    tr, vae = pipe.transformer, pipe.vae
    gen = torch.Generator().manual_seed(seed)
    latents, ids = pipe.prepare_latents(1, tr.config.in_channels // 4, height, width, torch.float32, "cpu", gen)
    cond_tokens, cond_ids = [], []
    for image, _ in conditions:
        x = image.permute(2, 0, 1)[None] * 2 - 1
        lat = vae.encode(x).latent_dist.sample(gen)
        lat = (lat - vae.config.shift_factor) * vae.config.scaling_factor
        cond_tokens.append(pipe._pack_latents(lat, *lat.shape))
        cond_ids.append(pipe._prepare_latent_image_ids(1, lat.shape[2] // 2, lat.shape[3] // 2, "cpu", torch.float32))
    scheduler = copy.deepcopy(pipe.scheduler)
    cfg = scheduler.config
    mu = calculate_shift(latents.shape[1], cfg.base_image_seq_len, cfg.max_image_seq_len, cfg.base_shift,
                         cfg.max_shift)
    timesteps, _ = retrieve_timesteps(scheduler, steps, "cpu", None, np.linspace(1.0, 1 / steps, steps), mu=mu)
    mask = ominicontrol_mask(len(conditions))
    adapters = [None, None] + [a for _, a in conditions]
    g = torch.tensor([guidance]) if tr.config.guidance_embeds else None
    one = torch.ones(1) if tr.config.guidance_embeds else None
    for t in timesteps:
        tb = t.expand(1) / 1000
        v = forward(tr, prompt_embeds, text_ids, [latents, *cond_tokens], [ids, *cond_ids],
                    [tb, tb] + [torch.zeros(1)] * len(conditions), [g, g] + [one] * len(conditions),
                    pooled, adapters, mask)
        latents = scheduler.step(v, t, latents, return_dict=False)[0]
    return latents
