"""A function-preserving deep and wide copy of a demo model, so that speculative decoding can pay.

Speculation only pays when one target step costs much more than one draft step, as it does with
real LLMs (a 70B target and a 1B draft). `demo:target` is so small (0.36M parameters) that on a
CPU a decoding step costs what its fixed per-step overhead costs, whatever the model, so a draft
model only adds steps. `deepen` builds a copy of such a Llama that computes the same function at
a real per-step cost:

* every MLP widens (256 -> `intermediate` units) with extra gate/up rows whose down_proj columns
  are zero, so the extra units are computed and then dropped;
* new decoder layers follow the original ones (`layers` in all), with real query/key/value and
  gate/up weights but a zero attention output projection (o_proj) and a zero MLP down projection
  (down_proj): each adds exactly zero to the residual stream, so the final norm and the LM head
  see the residual the original model computed.

The added weights are drawn from the config's initializer (normal, std `initializer_range`)
with a seeded generator, so the compute is real and the same arguments give the same bytes. They
cannot overflow: each new layer reads the residual through an RMSNorm (weight 1), so its inputs
are bounded; its products with zero weights are exact zeros, never NaN, while they are finite.

It runs wherever the demo models are built: in a training subprocess
(`latts.demo.models._train_in_subprocesses`) or in the caller's own process; torch's thread count
is set to one while it works and restored after.
"""

from __future__ import annotations

import copy
import re
import shutil
from pathlib import Path

__all__ = ["deepen"]

_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
_ZEROED = ("self_attn.o_proj.weight", "mlp.down_proj.weight")  # what makes an added layer a no-op
_DRAWN = ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
          "mlp.gate_proj.weight", "mlp.up_proj.weight")  # real compute in an added layer
_TOKENIZER_FILES = {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                    "tokenizer.model", "vocab.json", "merges.txt", "chat_template.jinja"}


def deepen(source: Path | str, out_dir: Path | str, layers: int = 16, intermediate: int = 2048, seed: int = 0) -> Path:
    """Save into out_dir a copy of the Llama at `source` with `layers` layers and MLPs `intermediate` wide.

    The copy computes the same logits as the source (up to float rounding in the wider matrix
    products) at the cost of the bigger shape; tokenizer files and generation config come along.
    Deterministic: the same arguments give the same bytes. Returns out_dir.
    """
    import torch
    from transformers import GenerationConfig, LlamaForCausalLM

    source, out_dir = Path(source), Path(out_dir)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        original = LlamaForCausalLM.from_pretrained(source, dtype=torch.float32)
        config = original.config
        if config.model_type != "llama":
            raise ValueError(f"{source}: deepen copies Llama models, not {config.model_type!r}")
        if layers < config.num_hidden_layers or intermediate < config.intermediate_size:
            raise ValueError(
                f"deepen only grows a model: {source} has {config.num_hidden_layers} layers and MLP "
                f"{config.intermediate_size}; asked for {layers} and {intermediate}"
            )
        if getattr(config, "mlp_bias", False) or getattr(config, "attention_bias", False):
            raise ValueError(f"{source}: deepen does not handle biased projections")
        big = copy.deepcopy(config)
        big.num_hidden_layers = layers
        big.intermediate_size = intermediate
        for key in ("layer_types", "use_sliding_window"):  # per-layer lists would keep the old length
            if isinstance(getattr(big, key, None), list):
                setattr(big, key, getattr(big, key)[:1] * layers)

        old = original.state_dict()
        gen = torch.Generator().manual_seed(seed)
        std = float(config.initializer_range)

        def drawn(*shape: int) -> torch.Tensor:
            return torch.randn(*shape, generator=gen, dtype=torch.float32) * std

        with torch.random.fork_rng(devices=[]):  # the throwaway init must not move the caller's RNG
            model = LlamaForCausalLM(big)
        model.eval()
        state = {}
        for name, like in model.state_dict().items():  # a fixed order: the draws are reproducible
            match = _LAYER.match(name)
            layer, part = (int(match[1]), match[2]) if match else (None, name)
            if layer is None or layer < config.num_hidden_layers:
                value = old[name]
                if part in ("mlp.gate_proj.weight", "mlp.up_proj.weight"):  # extra units: extra rows
                    value = torch.cat([value, drawn(like.shape[0] - value.shape[0], like.shape[1])])
                elif part == "mlp.down_proj.weight":  # ... whose outputs are dropped
                    value = torch.cat([value, like.new_zeros(like.shape[0], like.shape[1] - value.shape[1])], dim=1)
            elif part in _ZEROED:
                value = torch.zeros_like(like)
            elif part in _DRAWN:
                value = drawn(*like.shape)
            elif part.endswith("norm.weight"):
                value = torch.ones_like(like)
            else:
                raise ValueError(f"deepen does not know how to fill {name}")
            if value.shape != like.shape:
                raise ValueError(f"{name}: built {tuple(value.shape)}, expected {tuple(like.shape)}")
            state[name] = value.contiguous()
        model.load_state_dict(state, strict=True)
        if not all(torch.isfinite(p).all() for p in model.parameters()):
            raise ValueError(f"{source}: non-finite weights")

        model.generation_config = GenerationConfig.from_pretrained(source)
        out_dir.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out_dir, safe_serialization=True)
        for name in sorted(_TOKENIZER_FILES & {p.name for p in source.iterdir()}):  # verbatim: same tokens
            shutil.copyfile(source / name, out_dir / name)
    finally:
        torch.set_num_threads(threads)
    return out_dir


# demo:target-xl: 4 layers (2 added) with MLPs 8,192 wide, about 13M parameters. Chosen over 16
# layers of 2,048 (a similar cost per step) because each engine start compiles fewer layers.
XL_LAYERS, XL_INTERMEDIATE = 4, 8192


if __name__ == "__main__":  # python -m latts.demo.deep OUT_DIR: demo:target-xl (see latts.demo.models)
    import sys

    from latts.demo.models import model_path

    deepen(model_path("demo:target"), sys.argv[1], XL_LAYERS, XL_INTERMEDIATE)
