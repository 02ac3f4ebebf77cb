"""Delta-LoRA (SPEC 2.6): LoRA adapters whose product also updates the frozen base weight.

:func:`apply_delta_lora` replaces the targeted ``nn.Linear`` / ``nn.Conv2d`` layers of a model
by :class:`LoraLayer` wrappers laid out like PEFT's (``base_layer``, ``lora_A``, ``lora_B``;
``forward = base(x) + s * lora_B(lora_A(x))``, no dropout, A kaiming-uniform, B zeros, the
base frozen) and returns a :class:`DeltaLoRA` controller. After every optimizer step,
``controller.step()`` (or the optimizer post-step hook it registers) applies, once more than
``start_step`` steps were taken::

    W <- W + update_ratio * s * (B_{t+1} A_{t+1} - B_t A_t)

These updates telescope: ``W_t = W_K + lambda * s * (B_t A_t - B_K A_K)``. Checkpoints use
that: :meth:`DeltaLoRA.state_dict` (keyed like the unwrapped model, plus the factors and a
small JSON entry) replaces every fp32 base weight being updated by the constant
``C = W_K - lambda * s * B_K A_K``. A delta chain stores ``C`` once (exactly at its
keyframes; later deltas of a constant are zero and cost a few bytes) plus the small A and B
of every step; :meth:`DeltaLoRA.load_state_dict` rebuilds ``W_t = C + lambda * s * B_t A_t``
from the restored factors. Base weights that are not fp32 (bf16, fp16) would not telescope
exactly (rounding at every update), so they are stored as they are. Nothing in the chain
knows about LoRA: pass the controller where the model would go::

    ctl = apply_delta_lora(model, target_modules="all-linear", optimizer=opt)
    chain.save(step, {"model": ctl, "optimizer": opt})
    chain.restore_into(model=ctl, optimizer=opt)
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Sequence
from typing import Any, Union

import torch
from torch import nn

__all__ = ["LoraLayer", "DeltaLoRA", "apply_delta_lora", "find_target_modules"]

TargetModules = Union[str, Sequence[str]]
_PEFT_PREFIX = "base_model.model."
_STATE_KEY = "delta_lora"


class LoraLayer(nn.Module):
    """``base_layer(x) + scaling * lora_B(lora_A(x))`` around a frozen Linear or Conv2d.

    For ``nn.Linear(in, out)``: ``lora_A = Linear(in, rank)``, ``lora_B = Linear(rank, out)``.
    For ``nn.Conv2d``: ``lora_A`` is a conv with the base's kernel, stride, padding and
    dilation and ``rank`` output channels, ``lora_B`` a 1x1 conv; the weight they add is
    ``B.view(out, rank) @ A.view(rank, -1)`` reshaped like the base weight. No bias on either.
    """

    def __init__(self, base_layer: nn.Module, rank: int, scaling: float) -> None:
        super().__init__()
        if rank < 1:
            raise ValueError("rank must be >= 1")
        w = base_layer.weight
        kw: dict[str, Any] = {"device": w.device, "dtype": torch.float32}
        if isinstance(base_layer, nn.Linear):
            self.lora_A: nn.Module = nn.Linear(base_layer.in_features, rank, bias=False, **kw)
            self.lora_B: nn.Module = nn.Linear(rank, base_layer.out_features, bias=False, **kw)
        elif isinstance(base_layer, nn.Conv2d):
            if base_layer.groups != 1 or base_layer.padding_mode != "zeros":
                raise ValueError("LoRA on Conv2d needs groups=1 and padding_mode='zeros'")
            self.lora_A = nn.Conv2d(
                base_layer.in_channels,
                rank,
                base_layer.kernel_size,
                stride=base_layer.stride,
                padding=base_layer.padding,
                dilation=base_layer.dilation,
                bias=False,
                **kw,
            )
            self.lora_B = nn.Conv2d(rank, base_layer.out_channels, 1, bias=False, **kw)
        else:
            raise TypeError(f"LoRA wraps nn.Linear or nn.Conv2d, not {type(base_layer).__name__}")
        self.base_layer = base_layer
        self.rank = rank
        self.scaling = float(scaling)
        self.merged = False
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)
        for p in base_layer.parameters(recurse=False):
            if p is w:
                p.requires_grad_(False)

    def delta_weight(self) -> torch.Tensor:
        """``B @ A`` shaped like the base weight (fp32, not scaled, not tracked by autograd)."""
        with torch.no_grad():
            a = self.lora_A.weight.reshape(self.rank, -1)
            b = self.lora_B.weight.reshape(-1, self.rank)
            return (b @ a).reshape(self.base_layer.weight.shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        if self.merged:
            return out
        low = self.lora_B(self.lora_A(x.to(self.lora_A.weight.dtype)))
        return out + (self.scaling * low).to(out.dtype)

    def extra_repr(self) -> str:
        return f"rank={self.rank}, scaling={self.scaling}, merged={self.merged}"


def _output_head(model: nn.Module) -> nn.Module | None:
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    if head is None:
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        head = linears[-1] if linears else None
    return head


def find_target_modules(model: nn.Module, target_modules: TargetModules) -> list[str]:
    """Names of the modules of ``model`` that ``target_modules`` selects (PEFT conventions).

    * a list of strings: a module matches an entry when its name equals it or ends with
      ``"." + entry``;
    * a string: a regular expression that must match the whole module name;
    * ``"all-linear"``: every ``nn.Linear`` except the output head (the model's
      ``get_output_embeddings()`` if it has one, else the last ``nn.Linear`` defined).

    Only ``nn.Linear`` and ``nn.Conv2d`` modules are selected, never the inside of a
    :class:`LoraLayer` (wrapping twice is refused); a selection that is empty raises
    ``ValueError``.
    """
    kinds = (nn.Linear, nn.Conv2d)
    wrapped = [n + "." for n, m in model.named_modules() if isinstance(m, LoraLayer)]
    named = [
        (n, m)
        for n, m in model.named_modules()
        if n and isinstance(m, kinds) and not any(n.startswith(w) for w in wrapped)
    ]
    if isinstance(target_modules, str) and target_modules == "all-linear":
        head = _output_head(model)
        names = [n for n, m in named if isinstance(m, nn.Linear) and m is not head]
    elif isinstance(target_modules, str):
        pattern = re.compile(target_modules)
        names = [n for n, _ in named if pattern.fullmatch(n)]
    else:
        keys = list(target_modules)
        names = [n for n, _ in named if any(n == k or n.endswith("." + k) for k in keys)]
    if not names:
        raise ValueError(f"target_modules={target_modules!r} matches no Linear/Conv2d module")
    return names


class DeltaLoRA:
    """The controller returned by :func:`apply_delta_lora`.

    Attributes: ``layers`` (module name -> :class:`LoraLayer`), ``scaling`` (s), ``update_ratio``
    (lambda), ``start_step`` (K), ``step_count`` (optimizer steps seen).
    """

    def __init__(
        self,
        model: nn.Module,
        layers: dict[str, LoraLayer],
        *,
        rank: int,
        alpha: float,
        update_ratio: float,
        start_step: int,
        optimizer: torch.optim.Optimizer | None,
    ) -> None:
        self.model = model
        self.layers = layers
        self.rank = rank
        self.alpha = alpha
        self.scaling = alpha / rank
        self.update_ratio = float(update_ratio)
        self.start_step = int(start_step)
        self.step_count = 0
        self._prev = {n: lyr.delta_weight() for n, lyr in layers.items()}
        self._const: dict[str, torch.Tensor] = {}
        self._reported: list[str] = []
        self._hook: Any = None
        if optimizer is not None:
            self.attach(optimizer)

    # ------------------------------------------------------------------ training

    def lora_parameters(self) -> list[nn.Parameter]:
        """The A and B weights of every wrapped layer (what the optimizer should train)."""
        return [p for lyr in self.layers.values() for p in (lyr.lora_A.weight, lyr.lora_B.weight)]

    def _on_step(self, *_: Any) -> None:
        self.step()

    @torch.no_grad()
    def step(self) -> None:
        """Count one optimizer step; past ``start_step``, add ``lambda*s*(BA - BA_prev)`` to W."""
        self._check_unmerged("step")
        self.step_count += 1
        k = self.update_ratio * self.scaling
        for name, lyr in self.layers.items():
            cur = lyr.delta_weight()
            if self.step_count > self.start_step:
                w = lyr.base_layer.weight
                if name not in self._const and w.dtype == torch.float32:
                    # W_K - lambda*s*B_K A_K: the telescoping constant (before the first update)
                    self._const[name] = w.detach().clone() - k * self._prev[name]
                w.add_((k * (cur - self._prev[name])).to(w.dtype))
            self._prev[name] = cur

    def attach(self, optimizer: torch.optim.Optimizer) -> None:
        """Run :meth:`step` after every ``optimizer.step()`` (a post-step hook)."""
        self.detach()
        self._hook = optimizer.register_step_post_hook(self._on_step)

    def detach(self) -> None:
        """Remove the optimizer hook (the wrappers stay in the model)."""
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def _check_unmerged(self, what: str) -> None:
        if any(lyr.merged for lyr in self.layers.values()):
            raise RuntimeError(f"cannot {what} while the adapters are merged; unmerge() first")

    @torch.no_grad()
    def merge(self) -> None:
        """Fold ``s * B A`` into every base weight; the forward then skips the LoRA path."""
        for lyr in self.layers.values():
            if not lyr.merged:
                w = lyr.base_layer.weight
                w.add_((lyr.scaling * lyr.delta_weight()).to(w.dtype))
                lyr.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Undo :meth:`merge` (exact up to floating-point rounding)."""
        for lyr in self.layers.values():
            if lyr.merged:
                w = lyr.base_layer.weight
                w.sub_((lyr.scaling * lyr.delta_weight()).to(w.dtype))
                lyr.merged = False

    def effective_weights(self) -> dict[str, torch.Tensor]:
        """Module name -> ``W + s * B A`` (what the layer computes with)."""
        out = {}
        for name, lyr in self.layers.items():
            w = lyr.base_layer.weight.detach().float()
            out[name] = w if lyr.merged else w + lyr.scaling * lyr.delta_weight()
        return out

    # ------------------------------------------------------------------ checkpoints

    def _telescoped(self) -> list[str]:
        return sorted(self._const) if self.step_count > self.start_step else []

    def keyframe_due(self) -> bool:
        """True when the next :meth:`state_dict` switches base weights to their constant.

        That happens once, at the first save after ``start_step`` (never with the default
        ``start_step=0``: the first save already holds the constants). Save that state with
        ``chain.save(step, state, exact=True)``: a lossy delta from ``W`` to ``C`` would leave
        a residual that later steps keep paying for.
        """
        return self._telescoped() != self._reported

    def state_dict(self) -> dict[str, Any]:
        """The model's state for a checkpoint, keyed like the unwrapped model.

        ``model.state_dict()`` with ``<name>.base_layer.<p>`` renamed ``<name>.<p>`` (so the
        keys of a model saved before and after wrapping line up, and a chain delta-codes the
        base weights across the switch), ``<name>.weight`` = ``C`` for every telescoped layer,
        ``<name>.lora_A.weight`` / ``<name>.lora_B.weight``, and ``"delta_lora"``: a dict of
        JSON values (``step_count``, ``start_step``, ``update_ratio``, ``scaling``,
        ``telescoped``: the layer names whose weight entry is ``C``). ``C`` stays constant
        from step K on, so a delta chain stores it for free after it has reached it.
        """
        self._check_unmerged("checkpoint")
        tele = self._telescoped()
        sd: dict[str, Any] = {}
        for key, val in self.model.state_dict().items():
            sd[key.replace(".base_layer.", ".")] = val
        for name in tele:
            sd[f"{name}.weight"] = self._const[name]
        self._reported = tele
        sd[_STATE_KEY] = {
            "step_count": self.step_count,
            "start_step": self.start_step,
            "update_ratio": self.update_ratio,
            "scaling": self.scaling,
            "telescoped": tele,
        }
        return sd

    checkpoint_state = state_dict

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`state_dict`: load the model, rebuilding ``W = C + lambda*s*B A``."""
        if not isinstance(state, dict) or not isinstance(state.get(_STATE_KEY), dict):
            raise ValueError(f"not a DeltaLoRA checkpoint state (no {_STATE_KEY!r} entry)")
        meta = state[_STATE_KEY]
        if not math.isclose(float(meta["scaling"]), self.scaling) or not math.isclose(
            float(meta["update_ratio"]), self.update_ratio
        ):
            raise ValueError("checkpoint made with another scaling or update_ratio")
        self._check_unmerged("load a checkpoint")
        tele = [str(n) for n in meta["telescoped"]]
        unknown = set(tele) - set(self.layers)
        if unknown:
            raise ValueError(f"telescoped layers not in this model: {sorted(unknown)}")
        const: dict[str, torch.Tensor] = {}
        k = self.update_ratio * self.scaling
        sd = {key: v for key, v in state.items() if key != _STATE_KEY}
        for name in tele:
            c = torch.as_tensor(sd[f"{name}.weight"]).float()
            a = torch.as_tensor(sd[f"{name}.lora_A.weight"]).float()
            b = torch.as_tensor(sd[f"{name}.lora_B.weight"]).float()
            ba = (b.reshape(b.shape[0], -1) @ a.reshape(a.shape[0], -1)).reshape(c.shape)
            const[name] = c.clone()
            sd[f"{name}.weight"] = c + k * ba
        wrapped = {key.replace(".base_layer.", "."): key for key in self.model.state_dict()}
        self.model.load_state_dict({wrapped.get(key, key): v for key, v in sd.items()})
        self.step_count = int(meta["step_count"])
        self._const = {n: t.to(self.layers[n].base_layer.weight.device) for n, t in const.items()}
        self._reported = tele
        self._prev = {n: lyr.delta_weight() for n, lyr in self.layers.items()}

    load_checkpoint_state = load_state_dict

    # ------------------------------------------------------------------ PEFT files

    def save_adapter(
        self, directory: str | os.PathLike[str], *, base_weights: bool = False
    ) -> None:
        """Write ``adapter_model.safetensors`` and ``adapter_config.json`` as PEFT lays them out.

        Keys are ``base_model.model.<module>.lora_A.weight`` / ``.lora_B.weight``; the config
        has ``peft_type: "LORA"``, ``r``, ``lora_alpha``, ``target_modules`` (the wrapped module
        names) and ``lora_dropout: 0``. Delta-LoRA also changed the base weights: with
        ``base_weights=True`` they are written to ``delta_lora_base.safetensors`` (keys
        ``<module>.weight``), which a plain PEFT adapter cannot carry.
        """
        from safetensors.torch import save_file

        os.makedirs(directory, exist_ok=True)
        tensors = {}
        for name, lyr in self.layers.items():
            for part in ("lora_A", "lora_B"):
                w = getattr(lyr, part).weight.detach().cpu().contiguous()
                tensors[f"{_PEFT_PREFIX}{name}.{part}.weight"] = w
        save_file(tensors, os.path.join(directory, "adapter_model.safetensors"))
        config = {
            "peft_type": "LORA",
            "task_type": None,
            "r": self.rank,
            "lora_alpha": self.alpha,
            "lora_dropout": 0.0,
            "target_modules": sorted(self.layers),
            "bias": "none",
            "fan_in_fan_out": False,
            "init_lora_weights": True,
            "inference_mode": True,
            "modules_to_save": None,
            "base_model_name_or_path": None,
            "use_rslora": False,
            "use_dora": False,
        }
        with open(os.path.join(directory, "adapter_config.json"), "w") as f:
            json.dump(config, f, indent=2)
        if base_weights:
            base = {
                f"{n}.weight": lyr.base_layer.weight.detach().cpu().contiguous()
                for n, lyr in self.layers.items()
            }
            save_file(base, os.path.join(directory, "delta_lora_base.safetensors"))


def _adopt(optimizer: torch.optim.Optimizer, layers: dict[str, LoraLayer]) -> None:
    """Drop the frozen base weights from ``optimizer`` and give it the A/B weights."""
    frozen = {id(lyr.base_layer.weight) for lyr in layers.values()}
    for group in optimizer.param_groups:
        for p in group["params"]:
            if id(p) in frozen:
                optimizer.state.pop(p, None)  # e.g. momentum from full training before
        group["params"] = [p for p in group["params"] if id(p) not in frozen]
    held = {id(p) for g in optimizer.param_groups for p in g["params"]}
    new = [
        w
        for lyr in layers.values()
        for w in (lyr.lora_A.weight, lyr.lora_B.weight)
        if id(w) not in held
    ]
    if new:
        optimizer.add_param_group({"params": new})


def apply_delta_lora(
    model: nn.Module,
    target_modules: TargetModules = "all-linear",
    rank: int = 8,
    alpha: float | None = None,
    update_ratio: float = 2.0,
    start_step: int = 0,
    optimizer: torch.optim.Optimizer | None = None,
) -> DeltaLoRA:
    """Wrap the targeted layers of ``model`` in place and return the :class:`DeltaLoRA` controller.

    ``rank`` r; ``alpha`` gives the scaling ``s = alpha / r`` (default ``alpha = r``, i.e.
    ``s = 1``; the source used ``s = 0.5``, i.e. ``alpha = r / 2``); ``update_ratio`` lambda
    (paper: 2); ``start_step`` K: W is updated from the (K+1)-th step on (paper: 500).
    ``target_modules``: see :func:`find_target_modules`.

    The wrapped base weights are frozen (``requires_grad=False``, no optimizer state); their
    biases and all other parameters are left as they are (freeze them yourself for pure
    LoRA). With ``optimizer`` (e.g. built on ``model.parameters()`` before wrapping), the
    frozen weights are removed from its groups (with their state, if it trained them
    before), the A/B weights added as a new group with its
    defaults, and the controller runs after each of its steps
    (``register_step_post_hook``). Without, build the optimizer on the trainable parameters
    and call ``controller.step()`` after each ``optimizer.step()``.
    """
    if alpha is None:
        alpha = float(rank)
    names = find_target_modules(model, target_modules)
    layers: dict[str, LoraLayer] = {}
    scaling = alpha / rank
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        wrapper = LoraLayer(getattr(parent, child), rank, scaling)
        setattr(parent, child, wrapper)
        layers[name] = wrapper
    if optimizer is not None:
        _adopt(optimizer, layers)
    return DeltaLoRA(
        model,
        layers,
        rank=rank,
        alpha=alpha,
        update_ratio=update_ratio,
        start_step=start_step,
        optimizer=optimizer,
    )
