# Written by vffn-convert (`convert --emit-modeling`) next to a converted checkpoint.
#
# transformers remote code for VersatileFFN checkpoints (arXiv 2512.14531):
#
#     AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)   # llama, mistral, qwen2, qwen3, smollm3, granite, olmo, olmo2, olmo3, starcoder2, phi3, gemma, gemma2, gemma3_text, gpt_neox, phi, cohere, cohere2, gpt2
#     AutoModel.from_pretrained(DIR, trust_remote_code=True)              # bert
#     AutoModelForImageTextToText.from_pretrained(DIR, trust_remote_code=True)  # gemma3 (its text model)
#
# builds the stock transformers model and replaces each layer's FFN sub-layer S with a VersatileFFN
# block that reads the `expert_gate` / `depth_predictor` tensors named in config.json's
# "versatile_ffn" section. Every dense tensor keeps its name, so the checkpoint loads as written.
#
# eval() follows the converter's SPEC section 1 exactly (and `vffn-convert run` to float rounding):
#   width: top-k of expert_gate.x (ties to the lower index), softmax over the k logits,
#          x_width = sum_i w_i S_{j_i}(x), sub-expert e = neurons [e*I/N, (e+1)*I/N)
#   depth: L = argmax(depth_predictor.x) + 1, x_depth = S^L(x)
#   mix:   m = (D - L) / D, out = (1 - m) x_depth + m x_width
# train() follows the paper: a hard Gumbel-softmax over the depth logits (straight-through), at a
# temperature that decays per training step from 5.0 to 0.1 (x0.99984 per step); every loop
# 1..D is computed and kept, so each gets gradient through the straight-through weights; the mix
# weight uses the expected loop count E[L] = sum_l l * p_l under the relaxed sample p. The step
# counter is the model's (`versatile_depth_step`): it advances once per optimizer step that
# updates the model's parameters (a global optimizer post-step hook), so gradient accumulation,
# gradient checkpointing's recomputed forwards and every rank of a distributed run see one
# temperature per step; `model.set_depth_temperature_step(step)` sets it. save_pretrained records
# it in config.json (`versatile_ffn.depth_temperature_step`), from which a resumed model starts.
#
# With `versatile_ffn.router_aux_loss_coef` > 0 in config.json, training forwards also compute
# the Switch/Mixtral load-balance loss N * sum_e f_e * P_e over every layer's routing, pooled
# (f_e: top-k choices of sub-expert e per token, P_e: its mean router probability; k when
# balanced), as transformers' load_balancing_loss_func computes it without an attention mask. It
# is returned as `aux_loss` and added, times the coefficient, to `loss` when labels are given.
# The paper turns on a balance loss without releasing its formula; this is the standard one.
# Padding tokens count like any other.
#
# S is the dense sub-layer: x + f(norm(x)) for pre-norm models (x + r f(norm(x)) for Granite,
# whose layer scales the FFN branch by residual_multiplier r), x + norm(f(x)) for OLMo 2 and 3 (its norm
# follows the FFN), x + post(f(norm(x))) for Gemma 2 and 3 (a norm on each side), norm(x + f(x)) for BERT. The FFN's
# own dropout (GPT-2's resid_pdrop, BERT's hidden_dropout_prob) is applied to f in training, as in
# the dense model.
#
# Parallel blocks (GPT-NeoX with use_parallel_residual, Phi, Cohere, Cohere 2) compute
# h + A(N_1 h) + f(N_2 h): there is no stream between attention and the FFN, so the block is
# A(N_1 h) + V(h), with V the VersatileFFN block over T(h) = h + f(N_2 h) and both gates reading the
# layer's input h (N_2 = N_1 where the branches share a norm). The layer's own dropout on its FFN
# branch (post_mlp_dropout, resid_dropout) then applies to V(h) - h, once, where the sequential
# families' FFN dropout applies inside f on every loop.

import functools
import os
import shutil
import weakref

import torch
import torch.nn.functional as F
import transformers
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook
from transformers import (BertModel, CohereForCausalLM, GemmaForCausalLM, Gemma2ForCausalLM, GPT2LMHeadModel, GPTNeoXForCausalLM, GraniteForCausalLM,
                          LlamaForCausalLM, MistralForCausalLM, OlmoForCausalLM, Phi3ForCausalLM, PhiForCausalLM, Qwen2ForCausalLM,
                          Starcoder2ForCausalLM)

# Families newer than the oldest transformers we support: absent there, the others still load.
Qwen3ForCausalLM = getattr(transformers, "Qwen3ForCausalLM", None)  # 4.51
Olmo2ForCausalLM = getattr(transformers, "Olmo2ForCausalLM", None)  # 4.47
SmolLM3ForCausalLM = getattr(transformers, "SmolLM3ForCausalLM", None)  # 4.53
Gemma3ForCausalLM = getattr(transformers, "Gemma3ForCausalLM", None)  # 4.50
Olmo3ForCausalLM = getattr(transformers, "Olmo3ForCausalLM", None)  # 4.57
Gemma3ForConditionalGeneration = getattr(transformers, "Gemma3ForConditionalGeneration", None)  # 4.50
Cohere2ForCausalLM = getattr(transformers, "Cohere2ForCausalLM", None)  # 4.48

TEMPERATURE_START = 5.0
TEMPERATURE_END = 0.1
TEMPERATURE_DECAY = 0.99984


def depth_temperature(step):
    return max(TEMPERATURE_END, TEMPERATURE_START * TEMPERATURE_DECAY**step)


class _PassThrough:
    """Mixed into a pre-norm model's FFN norm: the layer's own call becomes the identity, so the
    VersatileFFN block sees the residual stream x, and applies the norm itself via `normalize`.
    The norm keeps its module path and parameters, so its weights load under their dense names."""

    def forward(self, hidden_states):
        return hidden_states

    def normalize(self, hidden_states):
        return super().forward(hidden_states)


def _pass_through(norm):
    base = type(norm)
    norm.__class__ = type("PassThrough" + base.__name__, (_PassThrough, base), {})


class _VersatileFFNMixin:
    """The routing, depth and mix shared by the pre-norm and post-norm forms. A subclass supplies
    `_neurons(h)` (the FFN's intermediate activations a, [.., I]), `_project(a)` (the output
    projection without its bias), `_out_bias`, `_dropout`, `_sublayer(x)` (S) and
    `_width(x, chosen, weights)`."""

    def _init_gates(self, config, hidden_size, intermediate_size, settings=None):
        settings = settings or config.versatile_ffn
        self.num_experts = int(settings["num_experts"])
        self.top_k = int(settings["top_k"])
        self.max_depth = int(settings["max_depth"])
        if intermediate_size % self.num_experts != 0:
            raise ValueError(f"intermediate size {intermediate_size} is not divisible by {self.num_experts} experts")
        self.slice_width = intermediate_size // self.num_experts
        self.expert_gate = nn.Linear(hidden_size, self.num_experts, bias=False)
        self.depth_predictor = nn.Linear(hidden_size, self.max_depth, bias=False)
        # Set by the model's forward from its step counter (one value for a whole training step).
        self.depth_temperature = TEMPERATURE_START
        # The coefficient is the model's (the section's), whatever this layer's own N, k and D.
        self.aux_loss_enabled = float(config.versatile_ffn.get("router_aux_loss_coef", 0) or 0) > 0
        self.aux_loss = None

    def _route(self, x):
        logits = self.expert_gate(x)
        # A stable descending sort breaks ties by the lower index, as SPEC section 1 requires.
        chosen = torch.sort(logits, dim=-1, descending=True, stable=True).indices[..., : self.top_k]
        weights = torch.softmax(logits.gather(-1, chosen), dim=-1)
        if self.training and self.aux_loss_enabled:
            # This layer's share of the statistics the model pools over layers: per sub-expert,
            # the mean number of top-k choices per token and the mean router probability.
            probs = torch.softmax(logits.float(), dim=-1).reshape(-1, self.num_experts)
            assigned = F.one_hot(chosen.reshape(-1, self.top_k), self.num_experts).sum(dim=1).float()
            self.aux_loss = (assigned.mean(dim=0), probs.mean(dim=0))
        return chosen, weights

    def _expert_mask(self, chosen, weights):
        """Per token, each intermediate neuron's weight: w_i on the slices of the chosen experts."""
        per_expert = torch.zeros(*chosen.shape[:-1], self.num_experts, dtype=weights.dtype, device=weights.device)
        per_expert = per_expert.scatter(-1, chosen, weights)
        return per_expert.repeat_interleave(self.slice_width, dim=-1)

    def _f_from(self, a):
        f = self._project(a)
        if self._out_bias is not None:
            f = f + self._out_bias
        return self._dropout(f)

    def _depth_weights(self, x):
        """(one-hot or straight-through loop weights [.., D], mix weight m [.., 1])."""
        logits = self.depth_predictor(x)
        depth = self.max_depth
        if not self.training:
            loops = logits.argmax(dim=-1)  # the first maximum: ties go to fewer loops
            one_hot = F.one_hot(loops, depth).to(x.dtype)
            m = (depth - (loops + 1)).to(x.dtype).unsqueeze(-1) / depth
            return one_hot, m
        tau = self.depth_temperature
        gumbels = -torch.empty_like(logits).exponential_().log()
        soft = torch.softmax((logits + gumbels) / tau, dim=-1)
        index = soft.argmax(dim=-1)
        hard = F.one_hot(index, depth).to(soft.dtype)
        straight_through = hard - soft.detach() + soft
        counts = torch.arange(1, depth + 1, dtype=soft.dtype, device=soft.device)
        expected_loops = (soft * counts).sum(dim=-1, keepdim=True)
        return straight_through, (depth - expected_loops) / depth

    def _versatile(self, x):
        chosen, weights = self._route(x)
        # The width path already has the FFN's activations at x, which make the first loop too.
        x_width, y = self._width(x, chosen, weights)
        loop_weights, m = self._depth_weights(x)
        outputs = [y]
        for _ in range(self.max_depth - 1):
            y = self._sublayer(y)
            outputs.append(y)
        if not self.training:
            # Only the chosen loop count's output is used; selecting it (rather than weighting all
            # D outputs by 0 and 1) keeps the result exact.
            stacked = torch.stack(outputs, dim=-2)
            index = loop_weights.argmax(dim=-1, keepdim=True).unsqueeze(-1).expand(*x.shape[:-1], 1, x.shape[-1])
            x_depth = stacked.gather(-2, index).squeeze(-2)
        else:
            x_depth = sum(loop_weights[..., loop : loop + 1] * out for loop, out in enumerate(outputs))
        return (1 - m) * x_depth + m * x_width


class PreNormVersatileFFN(_VersatileFFNMixin, nn.Module):
    """Takes the place of a pre-norm layer's `mlp`: adopts the dense MLP's modules under their own
    names (so `mlp.gate_proj.weight`, `mlp.c_fc.weight`, ... load unchanged), adds `expert_gate` and
    `depth_predictor`, and returns out(x) - x, because the layer adds the residual x back (divided
    by r for Granite, whose layer adds r times the MLP's output)."""

    def __init__(self, config, dense_mlp, norm, family, post_norm=None, parallel=False, settings=None):
        super().__init__()
        for name, child in dense_mlp.named_children():
            self.add_module(name, child)
        # Starcoder2MLP keeps its dropout as a float attribute, not a child module.
        if hasattr(dense_mlp, "residual_dropout"):
            self.residual_dropout = float(dense_mlp.residual_dropout)
        self.family = family
        self.residual_scale = float(config.residual_multiplier) if family == "granite" else 1.0
        # OLMo 2's FFN reads x itself and its norm follows: S(x) = x + norm(f(x)). Gemma 2 has
        # both: S(x) = x + post(f(norm(x))).
        self.norm_after = family == "olmo2"
        self.__dict__["post_norm"] = post_norm
        # Not a child: the norm stays registered where the layer has it.
        self.__dict__["norm"] = norm
        # A parallel layer's FFN is given N_2 h; the block reads h, which the layer's forward keeps.
        self.parallel = parallel
        self._init_gates(config, config.hidden_size, self._intermediate_size(), settings)

    # The ungated FFNs' (input, activation, output) module names; the gated ones use
    # gate_proj/up_proj/down_proj (Phi-3: gate_up_proj).
    UNGATED = {"gpt2": ("c_fc", "act", "c_proj"), "starcoder2": ("c_fc", "act", "c_proj"),
               "gpt_neox": ("dense_h_to_4h", "act", "dense_4h_to_h"), "phi": ("fc1", "activation_fn", "fc2")}

    def _intermediate_size(self):
        if self.family == "phi3":
            return self.gate_up_proj.weight.shape[0] // 2  # [gate; up]
        if self.family == "gpt2":
            return self.c_fc.weight.shape[1]  # Conv1D: [in, out]
        if self.family in self.UNGATED:
            return getattr(self, self.UNGATED[self.family][0]).weight.shape[0]  # Linear: [out, in]
        return self.gate_proj.weight.shape[0]

    def _neurons(self, h):
        if self.family == "phi3":
            gate, up = self.gate_up_proj(h).chunk(2, dim=-1)
            return up * self.activation_fn(gate)
        if self.family in self.UNGATED:
            fc_in, act, _ = self.UNGATED[self.family]
            return getattr(self, act)(getattr(self, fc_in)(h))
        return self.act_fn(self.gate_proj(h)) * self.up_proj(h)

    def _project(self, a):
        if self.family == "gpt2":
            return a @ self.c_proj.weight
        if self.family in self.UNGATED:
            return F.linear(a, getattr(self, self.UNGATED[self.family][2]).weight)
        return F.linear(a, self.down_proj.weight)

    @property
    def _out_bias(self):
        return getattr(self, self.UNGATED[self.family][2]).bias if self.family in self.UNGATED else self.down_proj.bias

    def _normalize(self, x):
        # A pass-through norm is applied here; a parallel layer's runs as the layer's own module.
        return self.norm.normalize(x) if isinstance(self.norm, _PassThrough) else self.norm(x)

    def _dropout(self, f):
        dropout = getattr(self, "dropout", None)
        if dropout is not None:
            return dropout(f)
        # Starcoder2MLP keeps its dropout as a probability, applied after c_proj.
        p = getattr(self, "residual_dropout", 0.0)
        return F.dropout(f, p=p, training=self.training) if p else f

    def _scaled(self, f):
        return f if self.residual_scale == 1.0 else self.residual_scale * f

    def _sublayer(self, x):
        if self.norm_after:
            return x + self._normalize(self._f_from(self._neurons(x)))
        if self.post_norm is not None:
            return x + self.post_norm.normalize(self._f_from(self._neurons(self._normalize(x))))
        return x + self._scaled(self._f_from(self._neurons(self._normalize(x))))

    def _width(self, x, chosen, weights):
        """(x_width, S(x)). The k sub-layers share x and norm(x), and their weights sum to 1, so
        sum_i w_i (x + r f_{j_i}(h)) = x + r (b + W_out (a * mask)): one product instead of k.
        A norm after the FFN (OLMo 2) does not distribute over the sum: one product per slot."""
        if self.norm_after or self.post_norm is not None:
            after = self.norm if self.norm_after else self.post_norm
            a = self._neurons(x if self.norm_after else self._normalize(x))
            x_width = torch.zeros_like(x)
            for slot in range(self.top_k):
                mask = self._expert_mask(chosen[..., slot : slot + 1], torch.ones_like(weights[..., slot : slot + 1]))
                x_width = x_width + weights[..., slot : slot + 1] * (x + after.normalize(self._f_from(a * mask)))
            return x_width, x + after.normalize(self._f_from(a))
        a = self._neurons(self._normalize(x))
        return x + self._scaled(self._f_from(a * self._expert_mask(chosen, weights))), x + self._scaled(self._f_from(a))

    def forward(self, x):
        if self.parallel:
            x = self.__dict__.pop("block_input")
        delta = self._versatile(x) - x
        return delta if self.residual_scale == 1.0 else delta / self.residual_scale


class _PostNormVersatileLayer(_VersatileFFNMixin):
    """Mixed into a BertLayer: its FFN sub-layer LayerNorm(x + f(x)) spans `intermediate` and
    `output`, so the gates sit on the layer (`encoder.layer.i.expert_gate.weight`)."""

    def _neurons(self, x):
        return self.intermediate(x)

    def _project(self, a):
        return F.linear(a, self.output.dense.weight)

    @property
    def _out_bias(self):
        return self.output.dense.bias

    def _dropout(self, f):
        return self.output.dropout(f)

    def _sublayer(self, x):
        return self.output.LayerNorm(x + self._f_from(self._neurons(x)))

    def _width(self, x, chosen, weights):
        """(x_width, S(x)). LayerNorm is not linear, so each chosen sub-layer is computed on its own."""
        a = self._neurons(x)
        out = torch.zeros_like(x)
        for i in range(self.top_k):
            mask = self._expert_mask(chosen[..., i : i + 1], torch.ones_like(weights[..., i : i + 1]))
            out = out + weights[..., i : i + 1] * self.output.LayerNorm(x + self._f_from(a * mask))
        return out, self.output.LayerNorm(x + self._f_from(a))

    def feed_forward_chunk(self, attention_output):
        return self._versatile(attention_output)


def _decoder_layers(model, family):
    if family == "gpt2":
        return model.transformer.h
    return model.gpt_neox.layers if family == "gpt_neox" else model.model.layers


class _ParallelLayer:
    """Mixed into a parallel decoder layer: hands the layer's input h to its FFN block. It is the
    layer's forward, not a hook, because transformers 5 checkpoints forward without the module's
    hooks: a recomputed layer must capture its (recomputed) input again."""

    def forward(self, *args, **kwargs):
        self.mlp.__dict__["block_input"] = args[0] if args else kwargs["hidden_states"]
        return super().forward(*args, **kwargs)


_parallel_classes = {}


def _make_parallel(layer):
    base = type(layer)
    if base not in _parallel_classes:
        _parallel_classes[base] = type("Versatile" + base.__name__, (_ParallelLayer, base), {})
    layer.__class__ = _parallel_classes[base]


def _ffn_norm_name(family):
    """The norm of each layer that belongs to the FFN sub-layer."""
    if family == "gpt2":
        return "ln_2"
    if family == "olmo2":
        return "post_feedforward_layernorm"
    if family == "gemma2":
        return "pre_feedforward_layernorm"
    return "post_attention_layernorm"


def install_versatile_ffn(model, config, family, layers=None):
    """Turns the freshly built dense `model` into its VersatileFFN form, in place (`layers`: the
    decoder layers, where they are not at the family's usual place)."""
    _install_blocks(model, config, family, layers)
    settings = config.versatile_ffn
    model.versatile_depth_step = int(settings.get("depth_temperature_step", 0) or 0)
    model.versatile_aux_loss_coef = float(settings.get("router_aux_loss_coef", 0) or 0)
    model._versatile_forwards = 0
    model.__dict__["_versatile_blocks"] = [m for m in model.modules() if isinstance(m, _VersatileFFNMixin)]
    _trained_models.add(model)


def _layer_settings(config):
    """Per layer index, its N, k and D, for the layers `gate_tensors` lists: the others were left
    dense by the conversion (`convert --layers`, a plan) and keep their stock MLP."""
    settings = config.versatile_ffn
    entries = settings.get("gate_tensors")
    if entries is None:
        return None  # every layer, with the section's settings
    out = {}
    for e in entries:
        out[int(e["layer"])] = {k: int(e.get(k, settings[k])) for k in ("num_experts", "top_k", "max_depth")}
    return out


def _install_blocks(model, config, family, layers):
    if not hasattr(config, "versatile_ffn"):
        raise ValueError("config.json has no \"versatile_ffn\" section: this is not a converted checkpoint")
    per_layer = _layer_settings(config)

    def upcycled(all_layers):
        for i, layer in enumerate(all_layers):
            if per_layer is None:
                yield layer, None
            elif i in per_layer:
                yield layer, per_layer[i]

    if family == "bert":
        for layer, settings in upcycled(model.encoder.layer):
            base = type(layer)
            layer.__class__ = type("Versatile" + base.__name__, (_PostNormVersatileLayer, base), {})
            layer._init_gates(config, config.hidden_size, layer.intermediate.dense.weight.shape[0], settings)
        return
    parallel = family in ("phi", "cohere") or family == "gpt_neox" and config.use_parallel_residual
    recorded = config.versatile_ffn.get("block")
    if recorded is not None and (recorded == "parallel") != parallel:
        # The gates were made for another block (a config edited since conversion).
        raise ValueError(f"versatile_ffn.block is \"{recorded}\" but this config makes {'parallel' if parallel else 'sequential'} layers")
    if parallel:
        # GPT-NeoX's FFN has its own norm; Phi's and Cohere's is the one before attention.
        norm_name = "post_attention_layernorm" if family == "gpt_neox" else "input_layernorm"
        for layer, settings in upcycled(_decoder_layers(model, family)):
            layer.mlp = PreNormVersatileFFN(config, layer.mlp, getattr(layer, norm_name), family, parallel=True, settings=settings)
            _make_parallel(layer)
        return
    norm_name = _ffn_norm_name(family)
    for layer, settings in upcycled(_decoder_layers(model, family) if layers is None else layers):
        norm = getattr(layer, norm_name)
        _pass_through(norm)
        post = getattr(layer, "post_feedforward_layernorm") if family == "gemma2" else None
        if post is not None:
            _pass_through(post)
        layer.mlp = PreNormVersatileFFN(config, layer.mlp, norm, family, post, settings=settings)


def _rope_settings_for_transformers_4(config):
    """transformers 5 writes the rotary settings into `rope_parameters`, which transformers 4 does
    not read: it would build the rotary embedding with its default theta (10000) and silently
    compute another function. Copy them to where transformers 4 looks, before the model is built."""
    params = getattr(config, "rope_parameters", None)
    if int(transformers.__version__.split(".")[0]) >= 5 or not isinstance(params, dict):
        return
    if "full_attention" in params:
        # One embedding per layer type (Gemma 3, OLMo 3): 4.x reads the global base and the
        # scaling of the full-attention layers at the top level, Gemma 3's local base beside them.
        local = params.get("sliding_attention") or {}
        full = params.get("full_attention") or {}
        if "rope_theta" in local and config.model_type == "gemma3_text":
            config.rope_local_base_freq = local["rope_theta"]
        elif local.get("rope_theta", full.get("rope_theta")) != full.get("rope_theta"):
            # transformers 4's OLMo 3 rotates both layer types with one rope_theta.
            raise ValueError(f"transformers {transformers.__version__} gives {config.model_type}'s sliding and full layers one rope base; "
                             f"this checkpoint has {local.get('rope_theta')} and {full.get('rope_theta')}: use transformers 5")
        params = full
    if "rope_theta" in params:
        config.rope_theta = params["rope_theta"]
    if "partial_rotary_factor" in params:
        # transformers 4.48+ reads Phi-3's partial rotary at the top level only.
        config.partial_rotary_factor = params["partial_rotary_factor"]
    if config.model_type == "gpt_neox":
        # GPTNeoXConfig 4.x's own names.
        config.rotary_pct = params.get("partial_rotary_factor", config.rotary_pct)
        config.rotary_emb_base = params.get("rope_theta", config.rotary_emb_base)
    if params.get("rope_type", "default") != "default" and getattr(config, "rope_scaling", None) is None:
        config.rope_scaling = {k: v for k, v in params.items() if k != "rope_theta"}


def _embedding_scale_as_recorded(model, config):
    """SPEC section 5: Gemma scales its embeddings by sqrt(hidden_size) rounded to the checkpoint's
    stored dtype (bf16 sqrt(1152) is 34.0), which is what transformers computes when it loads the
    checkpoint in that dtype. Loaded in f32 it would not round, so the converter records the
    scale and the model uses it in every dtype."""
    scale = (getattr(config, "versatile_ffn", None) or {}).get("embedding_scale")
    if scale is None:
        return
    embed = model.get_input_embeddings()
    if hasattr(embed, "embed_scale"):
        # transformers 5 (and 4.x Gemma 3): a buffer, which from_pretrained initializes again
        # from scalar_embed_scale.
        embed.scalar_embed_scale = float(scale)
        with torch.no_grad():
            embed.embed_scale.fill_(float(scale))
    else:
        # transformers 4 multiplies by sqrt(hidden_size) after the lookup, rounded to the
        # activations' dtype: the hook makes the product the recorded scale (a factor of exactly
        # 1 when the model runs in the stored dtype).
        root = config.hidden_size**0.5

        def rescale(module, inputs, output):
            return output * (float(scale) / float(torch.tensor(root, dtype=output.dtype)))
        embed.register_forward_hook(rescale)


# Every VersatileFFN model built here, for the optimizer hook below (weakly: a model that is
# dropped is forgotten).
_trained_models = globals().get("_trained_models") or weakref.WeakSet()


def _advance_depth_steps(optimizer, args, kwargs):
    """After any optimizer step: the models whose parameters it updated move to the next
    temperature step, once, however many forwards (accumulated, recomputed) the step took, and
    once however many optimizers step after them (two optimizers, ZeroRedundancyOptimizer's
    nested step)."""
    stepped = {id(p) for group in optimizer.param_groups for p in group["params"]}
    for model in list(_trained_models):
        if model.training and model._versatile_forwards and any(id(p) in stepped for p in model.parameters()):
            model.versatile_depth_step += 1
            model._versatile_forwards = 0


# Once per process: transformers may execute this module again into the same module object.
if "_step_hook" not in globals():
    _step_hook = register_optimizer_step_post_hook(lambda *a: _advance_depth_steps(*a))

# Training forwards without an optimizer step that updates the model, before saying so: an
# optimizer over master copies (DeepSpeed ZeRO, offloading optimizers) never matches.
_FORWARDS_WITHOUT_STEP = 256


class DepthTemperatureCallback(transformers.TrainerCallback):
    """For the Trainer where the optimizer hook cannot see the model's parameters (DeepSpeed) or
    where training resumes from a Trainer checkpoint: the temperature step follows the Trainer's
    global step. `trainer.add_callback(DepthTemperatureCallback())`."""

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        target = model
        while target is not None and not hasattr(target, "set_depth_temperature_step"):
            target = getattr(target, "module", None)
        if target is not None:
            target.set_depth_temperature_step(state.global_step)


_outputs_with_aux_loss = {}


def _with_aux_loss(out, aux):
    """`out` as the same output class plus an `aux_loss` field (as transformers' MoE outputs
    carry theirs): a declared field survives DDP's and FSDP's rebuilding of outputs."""
    cls = type(out)
    if cls not in _outputs_with_aux_loss:
        import dataclasses
        import typing
        _outputs_with_aux_loss[cls] = dataclasses.dataclass(
            type(cls.__name__ + "WithAuxLoss", (cls,), {"__annotations__": {"aux_loss": typing.Optional[torch.FloatTensor]}, "aux_loss": None}))
    return _outputs_with_aux_loss[cls](**dict(out.items()), aux_loss=aux)


def _keep_remote_code(save_directory):
    """transformers 4 copies a remote-code model's module into what it saves only for models
    loaded from the Hub: this file goes beside config.json's auto_map in every case."""
    target = os.path.join(save_directory, os.path.basename(__file__))
    if os.path.isdir(save_directory) and not os.path.exists(target):
        shutil.copyfile(__file__, target)


def _fsdp2_wrapped(model):
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:
        return None
    return FSDPModule if isinstance(model, FSDPModule) else None


class _VersatileModelMixin:
    def set_depth_temperature_step(self, step):
        """Sets the training step the Gumbel temperature is computed from."""
        self.versatile_depth_step = int(step)

    def __init_subclass__(cls, **kwargs):
        # The stock forward with this mixin's work around it, under the stock signature (the
        # Trainer keeps only the dataset columns the model's forward names). A subclass of a
        # class already wrapped (FSDP2's `FSDP<cls>`) keeps the one wrapper.
        super().__init_subclass__(**kwargs)
        stock = next(vars(c)["forward"] for c in cls.__mro__ if c not in (cls, _VersatileModelMixin) and "forward" in vars(c))
        if getattr(stock, "_versatile_wrapper", False):
            return

        @functools.wraps(stock)
        def forward(self, *args, **kwargs):
            return _VersatileModelMixin._forward(self, stock, *args, **kwargs)
        forward._versatile_wrapper = True
        cls.forward = forward

    def _forward(self, stock, *args, **kwargs):
        if self.training:
            # One temperature for the whole step, read by every layer, also when gradient
            # checkpointing runs a layer's forward again during backward.
            tau = depth_temperature(self.versatile_depth_step)
            for block in self._versatile_blocks:
                block.depth_temperature = tau
                block.aux_loss = None
            self._versatile_forwards += 1
            if self._versatile_forwards == _FORWARDS_WITHOUT_STEP:
                import warnings
                warnings.warn(f"{_FORWARDS_WITHOUT_STEP} training forwards and no optimizer step over this model's parameters: the "
                              "depth temperature stays at its step (an optimizer over master copies, such as DeepSpeed ZeRO?). "
                              "Call model.set_depth_temperature_step(step) each step, or add DepthTemperatureCallback to the Trainer.")
        out = stock(self, *args, **kwargs)
        if self.training and self.versatile_aux_loss_coef > 0 and hasattr(out, "keys"):
            stats = [b.aux_loss for b in self._versatile_blocks if b.aux_loss is not None]
            if stats:
                # Mixtral's load_balancing_loss_func over every layer's routing, pooled: N times
                # the sum over sub-experts of (choices per token) x (mean router probability).
                device = stats[0][0].device
                assigned = torch.stack([a.to(device) for a, _ in stats]).mean(dim=0)
                probs = torch.stack([p.to(device) for _, p in stats]).mean(dim=0)
                aux = len(assigned) * (assigned * probs).sum()
                out = _with_aux_loss(out, aux)
                if getattr(out, "loss", None) is not None:
                    out.loss = out.loss + (self.versatile_aux_loss_coef * aux).to(out.loss.device, out.loss.dtype)
        return out

    def save_pretrained(self, save_directory, *args, **kwargs):
        """save_pretrained, recording the temperature step in config.json. On a model sharded
        with FSDP2 (`fully_shard`), every rank calls it: the full state dict is gathered, the
        tied duplicate of the embedding dropped, and rank 0 writes the directory as the
        unwrapped class would (auto_map names ours, not FSDP's wrapper)."""
        self.config.versatile_ffn = dict(self.config.versatile_ffn, depth_temperature_step=int(self.versatile_depth_step))
        main = kwargs.get("is_main_process", True)
        fsdp = _fsdp2_wrapped(self)
        if fsdp is None:
            result = super().save_pretrained(save_directory, *args, **kwargs)
            if main:
                _keep_remote_code(save_directory)
            return result
        import torch.distributed as dist
        gathered = "state_dict" not in kwargs
        if gathered:
            # Called on every rank: gather the full state dict, rank 0 writes, all wait for it.
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
            kwargs["state_dict"] = get_model_state_dict(self, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
            main = main and (not dist.is_initialized() or dist.get_rank() == 0)
            kwargs["is_main_process"] = main
        # The Trainer gathers itself and calls this on rank 0 only, with the state dict.
        result = self._save_unwrapped(save_directory, fsdp, *args, **kwargs) if main else None
        if gathered and dist.is_initialized():
            dist.barrier()
        return result

    def _save_unwrapped(self, save_directory, fsdp, *args, **kwargs):
        state = kwargs["state_dict"]
        if getattr(self.config, "tie_word_embeddings", False):
            tied = getattr(self, "_tied_weights_keys", None) or []
            for key in (tied.keys() if isinstance(tied, dict) else tied):
                state.pop(key, None)
        wrapper = type(self)
        self.__class__ = next(c for c in wrapper.__mro__ if not issubclass(c, fsdp))
        try:
            result = super(_VersatileModelMixin, self).save_pretrained(save_directory, *args, **kwargs)
        finally:
            self.__class__ = wrapper
        _keep_remote_code(save_directory)
        return result


class VersatileLlamaForCausalLM(_VersatileModelMixin, LlamaForCausalLM):
    def __init__(self, config):
        _rope_settings_for_transformers_4(config)
        super().__init__(config)
        install_versatile_ffn(self, config, "llama")


class VersatileMistralForCausalLM(_VersatileModelMixin, MistralForCausalLM):
    def __init__(self, config):
        _rope_settings_for_transformers_4(config)
        super().__init__(config)
        install_versatile_ffn(self, config, "llama")


class VersatileQwen2ForCausalLM(_VersatileModelMixin, Qwen2ForCausalLM):
    def __init__(self, config):
        _rope_settings_for_transformers_4(config)
        super().__init__(config)
        install_versatile_ffn(self, config, "llama")


if Qwen3ForCausalLM is not None:
    class VersatileQwen3ForCausalLM(_VersatileModelMixin, Qwen3ForCausalLM):
        def __init__(self, config):
            _rope_settings_for_transformers_4(config)
            super().__init__(config)
            install_versatile_ffn(self, config, "llama")


if SmolLM3ForCausalLM is not None:
    class VersatileSmolLM3ForCausalLM(_VersatileModelMixin, SmolLM3ForCausalLM):
        def __init__(self, config):
            _rope_settings_for_transformers_4(config)
            super().__init__(config)
            install_versatile_ffn(self, config, "llama")


class VersatileGraniteForCausalLM(_VersatileModelMixin, GraniteForCausalLM):
    def __init__(self, config):
        _rope_settings_for_transformers_4(config)
        super().__init__(config)
        install_versatile_ffn(self, config, "granite")


class VersatileOlmoForCausalLM(_VersatileModelMixin, OlmoForCausalLM):
    def __init__(self, config):
        _rope_settings_for_transformers_4(config)
        super().__init__(config)
        install_versatile_ffn(self, config, "llama")


class VersatileGemmaForCausalLM(_VersatileModelMixin, GemmaForCausalLM):
    def __init__(self, config):
        _rope_settings_for_transformers_4(config)
        super().__init__(config)
        install_versatile_ffn(self, config, "llama")
        _embedding_scale_as_recorded(self, config)


class VersatileGemma2ForCausalLM(_VersatileModelMixin, Gemma2ForCausalLM):
    def __init__(self, config):
        _rope_settings_for_transformers_4(config)
        super().__init__(config)
        install_versatile_ffn(self, config, "gemma2")
        _embedding_scale_as_recorded(self, config)


class VersatileStarcoder2ForCausalLM(_VersatileModelMixin, Starcoder2ForCausalLM):
    def __init__(self, config):
        _rope_settings_for_transformers_4(config)
        super().__init__(config)
        install_versatile_ffn(self, config, "starcoder2")


if Olmo2ForCausalLM is not None:
    class VersatileOlmo2ForCausalLM(_VersatileModelMixin, Olmo2ForCausalLM):
        def __init__(self, config):
            _rope_settings_for_transformers_4(config)
            super().__init__(config)
            install_versatile_ffn(self, config, "olmo2")


if Gemma3ForCausalLM is not None:
    class VersatileGemma3ForCausalLM(_VersatileModelMixin, Gemma3ForCausalLM):
        def __init__(self, config):
            _rope_settings_for_transformers_4(config)
            super().__init__(config)
            install_versatile_ffn(self, config, "gemma2")  # the same sandwich
            _embedding_scale_as_recorded(self, config)


if Olmo3ForCausalLM is not None:
    class VersatileOlmo3ForCausalLM(_VersatileModelMixin, Olmo3ForCausalLM):
        def __init__(self, config):
            _rope_settings_for_transformers_4(config)
            super().__init__(config)
            install_versatile_ffn(self, config, "olmo2")  # the same output norms


if Gemma3ForConditionalGeneration is not None:
    class VersatileGemma3ForConditionalGeneration(_VersatileModelMixin, Gemma3ForConditionalGeneration):
        """Gemma 3 4B/12B/27B: VersatileFFN in the text model, the vision tower as it was."""

        def __init__(self, config):
            text = config.get_text_config()
            _rope_settings_for_transformers_4(text)
            super().__init__(config)
            # The text model's layers read the settings (install_versatile_ffn refuses without them).
            if hasattr(config, "versatile_ffn"):
                text.versatile_ffn = config.versatile_ffn
            # transformers 4.52+ holds the text model at model.language_model; 4.50-4.51 at
            # language_model.model (the checkpoint's own names, which both load).
            inner = getattr(self, "model", None)
            language_model = getattr(inner, "language_model", None) if inner is not None else None
            layers = language_model.layers if language_model is not None and hasattr(language_model, "layers") else self.language_model.model.layers
            install_versatile_ffn(self, text, "gemma2", layers=layers)  # the same sandwich
            _embedding_scale_as_recorded(self, text)


def _partial_rotary(config):
    params = getattr(config, "rope_parameters", None) or {}
    return params.get("partial_rotary_factor", getattr(config, "partial_rotary_factor", 1.0))


class VersatilePhi3ForCausalLM(_VersatileModelMixin, Phi3ForCausalLM):
    def __init__(self, config):
        # transformers before 4.48 rotates the whole head whatever partial_rotary_factor says
        # (Phi-4-mini's 0.75): that model would silently compute another function.
        import inspect
        from transformers.models.phi3 import modeling_phi3
        if _partial_rotary(config) != 1.0 and "partial_rotary_factor" not in inspect.getsource(modeling_phi3):
            raise ValueError(f"transformers {transformers.__version__} ignores partial_rotary_factor for Phi-3; use 4.48 or later")
        _rope_settings_for_transformers_4(config)
        super().__init__(config)
        install_versatile_ffn(self, config, "phi3")


class VersatileGPTNeoXForCausalLM(_VersatileModelMixin, GPTNeoXForCausalLM):
    def __init__(self, config):
        _rope_settings_for_transformers_4(config)
        super().__init__(config)
        install_versatile_ffn(self, config, "gpt_neox")


def _share_checkpoint_renames(stock, ours):
    """transformers 5 renames some checkpoint keys on load, and back on save, for its own classes
    only (GPT-NeoX's `embed_out` is its `lm_head`): the same renames for our subclass, so that
    checkpoints load and save under their usual names. transformers 4 renames nothing."""
    try:
        from transformers.conversion_mapping import get_checkpoint_conversion_mapping, register_checkpoint_conversion_mapping
    except ImportError:
        return
    renames = get_checkpoint_conversion_mapping(stock)
    if renames:
        register_checkpoint_conversion_mapping(ours, renames, overwrite=True)


_share_checkpoint_renames("GPTNeoXForCausalLM", "VersatileGPTNeoXForCausalLM")


def _phi_splits_heads_before_qk_layernorm():
    """transformers 4.x's Phi applies its per-head q/k LayerNorms before splitting the heads, so a
    model with qk_layernorm fails there (the stock one too)."""
    import inspect
    from transformers.models.phi import modeling_phi
    source = inspect.getsource(modeling_phi.PhiAttention.forward)
    return source.find(".view(") < source.find("self.q_layernorm(")


class VersatilePhiForCausalLM(_VersatileModelMixin, PhiForCausalLM):
    def __init__(self, config):
        if getattr(config, "qk_layernorm", False) and not _phi_splits_heads_before_qk_layernorm():
            raise ValueError(f"transformers {transformers.__version__}'s Phi cannot run qk_layernorm (it normalizes before splitting the heads); use transformers 5")
        _rope_settings_for_transformers_4(config)
        super().__init__(config)
        install_versatile_ffn(self, config, "phi")


class VersatileCohereForCausalLM(_VersatileModelMixin, CohereForCausalLM):
    def __init__(self, config):
        _rope_settings_for_transformers_4(config)
        super().__init__(config)
        install_versatile_ffn(self, config, "cohere")


if Cohere2ForCausalLM is not None:
    class VersatileCohere2ForCausalLM(_VersatileModelMixin, Cohere2ForCausalLM):
        def __init__(self, config):
            _rope_settings_for_transformers_4(config)
            super().__init__(config)
            install_versatile_ffn(self, config, "cohere")  # the same block


class VersatileGPT2LMHeadModel(_VersatileModelMixin, GPT2LMHeadModel):
    def __init__(self, config):
        # transformers 4's SDPA attention for GPT-2 leaves out scale_attn_by_inverse_layer_idx
        # (its eager attention applies it), so such models are built with eager attention there.
        if int(transformers.__version__.split(".")[0]) < 5 and getattr(config, "scale_attn_by_inverse_layer_idx", False):
            config._attn_implementation = "eager"
        super().__init__(config)
        install_versatile_ffn(self, config, "gpt2")


class VersatileBertModel(_VersatileModelMixin, BertModel):
    def __init__(self, config, add_pooling_layer=True):
        super().__init__(config, add_pooling_layer=add_pooling_layer)
        install_versatile_ffn(self, config, "bert")
