"""Many users' LoRAs in one batch: slot buffers inside the shared models' target layers.

`SlotLoRA.install(prefix, module, targets)` turns every target `nn.Linear` (and 1x1 `nn.Conv2d`, which SD1.5's
`proj_in`/`proj_out` are) of `module` into a `SlotLinear`/`SlotConv2d`: the same object type for peft (a subclass
of the original class, sharing its weight and bias, same state_dict), plus preallocated, non-persistent buffers

    slot_A[S + 1, R, in]    slot_Bt[S + 1, R, out]    slot_scale[S + 1]

(columns of one `SlotGroup`'s stacked buffers per layer kind and shape) for S slots of max rank R (B is kept
transposed, so that a slot's first r rows are one dense block for a fused optimizer). Slot S (index -1 from outside)
is the zero slot: "no LoRA". A rank r < R fills `slot_A[s, :r]` and `slot_Bt[s, :r]` and leaves the rest zero, which
is exact. `slot_scale[s]` is alpha / r times the user's LoRA scale.

Per forward, `set_slots(index)` (a context manager too: `with lora.slots(index): ...`) gives every sample of the
batch its slot (a [n] tensor or list of ints, -1 for none). The index is copied into a preallocated buffer, so a
captured CUDA graph reads the new index without recapture. A layer whose input batch is k * n (CFG's doubled batch
`cat([x] * 2)`, or images per prompt laid out the same way) tiles the index k times. Each layer then adds

    (x @ slot_A[idx].T @ slot_Bt[idx]) * slot_scale[idx]          (batched, gathered matmuls)

to the base layer's output, in the slot dtype (float32 by default), cast back to the base output's dtype as peft
does. With no slots set (`active == 0`) a layer is exactly its base layer, so the plain peft path (diffusers'
`load_lora_weights`, peft's `inject_adapter_in_model`) keeps working on top of the same modules: peft sees an
`nn.Linear` and wraps it as usual.

A batch whose rows all have one slot can instead run the plain model with that slot added into its weights
(`SlotMerge`: a gather and a batched matmul per group, around the call), at a fraction of the slot layers' launches.

Loading a user is a copy: `load_slot(slot, state_dict, alpha=..., scale=...)` takes the diffusers/peft LoRA keys the
engine writes (`unet.<path>.lora.down.weight`, `...lora_A.weight`, `text_encoder.<path>.lora_linear_layer.up.weight`,
...), and `load_slot_file(slot, path, scale)` reads such a file with its `lora_adapter_metadata` (r, lora_alpha).
`clear_slot(slot)` zeroes it. No module is ever swapped after `install`.

Training: `trainable(slot, rank)` returns leaf Parameters that alias `slot_A[slot, :rank]` / `slot_Bt[slot, :rank].T`
(named like peft's: `<prefix>.<path>.lora_A.weight`), so an ordinary optimizer over them updates the slot in place.
Under `train_rows(rows)` each row of a batch takes its update from its job's aliases themselves (stacked per layer,
zero-padded to R as in the slot), so the backward pass writes each job's gradient straight into its own parameters:
no gather from the shared buffers and no scatter back (their index_put kernels were most of a shared step's GPU time).
"""

import json
import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import safetensors.torch
import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import nn

NONE = -1  # the slot index meaning "no LoRA"
HALF_AT_INFERENCE = True  # a half-precision model's updates in its dtype when no gradient is taken (bench A/B)
# diffusers/peft key spellings of one LoRA matrix: (component).(module path).(down|up).weight
_KEY = re.compile(
    r"(unet|text_encoder)\.(.+?)\.(?:lora\.(down|up)|lora_linear_layer\.(down|up)|lora_(A|B)(?:\.[^.]+)?)\.weight"
)
_KIND = {"down": "A", "up": "B", "A": "A", "B": "B"}


class SlotLoRA:
    """The slot table of the shared models: S slots of max rank R over every installed layer."""

    def __init__(
        self,
        slots: int,
        max_rank: int,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        max_batch: int = 256,
    ):
        self.slots, self.max_rank, self.dtype = slots, max_rank, dtype
        self.device = torch.device(device)
        self.zero_slot = slots
        self.layers: dict[str, "SlotLayer"] = {}  # "<prefix>.<path>" -> layer
        self.groups: list["SlotGroup"] = []  # the layers' buffers, stacked by kind and shape
        self.targets: dict[str, tuple[str, ...]] = {}  # prefix -> the targets installed under it
        # Preallocated so graphs captured over it see each new index; `active` is the batch's index length.
        self.index = torch.full((max_batch,), slots, dtype=torch.long, device=self.device)
        self._index_host = [slots] * max_batch  # what `index` holds: a host-to-device copy only when it changes
        self.active = 0
        # Which layers each slot fills; a forward computes updates only on the layers some slot of its batch fills
        # (the rest would add exact zeros), or on `forced` layers (what a captured graph was captured with).
        self.filled: dict[int, frozenset[str]] = {}
        self.forced: frozenset[str] | None = None
        self._live: frozenset[str] = frozenset()
        # Under train_rows: each row's (slot, trainable aliases) or None, for the layers' forwards.
        self.rows: list[tuple[int, dict[str, nn.Parameter]] | None] | None = None

    # --- installation ------------------------------------------------------------------------------------------

    def install(self, prefix: str, module: nn.Module, targets: Iterable[str]) -> list[str]:
        """Makes every Linear / 1x1 Conv2d of `module` whose name ends with one of `targets` a slot layer; returns
        their names ("<prefix>.<path>"). Done once, before any graph capture."""
        targets = tuple(targets)
        self.targets[prefix] = targets
        found: list[tuple[str, nn.Module, type, tuple]] = []  # in module order: peft's, which `trainable` keeps
        for path, layer in list(module.named_modules()):
            target = next((t for t in targets if path == t or path.endswith("." + t)), None) if path else None
            if target is None or isinstance(layer, SlotLayer):
                continue
            if type(layer) is nn.Linear:
                cls = SlotLinear
            elif type(layer) is nn.Conv2d and layer.kernel_size == (1, 1) and layer.stride == (1, 1) \
                    and layer.padding in ((0, 0), "valid") and layer.groups == 1:
                cls = SlotConv2d
            else:
                continue
            found.append((path, layer, cls, (cls, target, layer.weight.shape[1], layer.weight.shape[0])))
        members: dict[tuple, list[str]] = {}
        for path, _, _, key in found:
            members.setdefault(key, []).append(f"{prefix}.{path}")
        groups = {key: SlotGroup(self, names, key[2], key[3]) for key, names in members.items()}
        self.groups.extend(groups.values())
        installed = []
        for path, layer, cls, key in found:
            name, group = f"{prefix}.{path}", groups[key]
            slotted = cls.adopt(layer, self, group, len(group.layers))
            slotted.slot_live = False
            slotted.slot_name = name
            group.layers.append(slotted)
            parent_path, _, leaf = path.rpartition(".")
            setattr(module.get_submodule(parent_path) if parent_path else module, leaf, slotted)
            self.layers[name] = slotted
            installed.append(name)
        return installed

    # --- the per-batch index -----------------------------------------------------------------------------------

    def set_slots(self, index: torch.Tensor | Sequence[int] | None) -> None:
        """Every sample's slot for the next forward passes (-1: none); None: LoRA off (layers are the base)."""
        if index is None:
            self.active = 0
            return
        # Host values: callers give lists or CPU tensors, so reading them costs no device sync.
        values = index.tolist() if isinstance(index, torch.Tensor) else list(index)
        if len(values) > len(self.index) or any(isinstance(v, list) for v in values):
            raise ValueError(f"slot index must be 1-D with at most {len(self.index)} entries")
        values = [int(v) for v in values]
        if any(v < NONE or v >= self.slots for v in values):
            raise ValueError(f"slot index out of range: {values}")
        values = [self.zero_slot if v == NONE else v for v in values]
        if values != self._index_host[: len(values)]:
            self.index[: len(values)].copy_(torch.tensor(values, dtype=torch.long))
            self._index_host[: len(values)] = values
        self.active = len(values)
        self._apply_live(self.forced if self.forced is not None else self.layers_of(values))

    def layers_of(self, index: Iterable[int]) -> frozenset[str]:
        """The layers that the LoRAs in these slots fill."""
        return frozenset().union(*(self.filled.get(slot, ()) for slot in set(index)))

    def _apply_live(self, live: frozenset[str]) -> None:
        if live != self._live:
            for name, layer in self.layers.items():
                layer.slot_live = name in live
            self._live = live

    @contextmanager
    def use(self, index: torch.Tensor | Sequence[int] | None) -> Iterator[None]:
        previous = [NONE if v == self.zero_slot else v for v in self._index_host[: self.active]] if self.active else None
        self.set_slots(index)
        try:
            yield
        finally:
            self.set_slots(previous)

    @contextmanager
    def train_rows(self, rows: Sequence[tuple[int, dict[str, nn.Parameter]] | None]) -> Iterator[None]:
        """Forwards inside give row i the LoRA of `rows[i]` = (slot, its aliases from `trainable`), None for no
        LoRA, with gradients into those aliases. Nothing is copied to the device (the index buffer is not used), so a
        CUDA graph can capture these forwards: every tensor they read has a fixed address."""
        for row in rows:
            if row is not None:
                self._check(row[0])
        previous = (self.rows, self.active, self._live)
        self.rows, self.active = list(rows), len(rows)
        self._apply_live(self.forced if self.forced is not None else self.layers_of(r[0] for r in rows if r))
        try:
            yield
        finally:
            self.rows, self.active = previous[:2]
            self._apply_live(previous[2])

    def row_weights(self, layer: "SlotLayer") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The stacked [n, R, in] and [n, R, out] weights and [n] scales of `layer` for the rows set by
        `train_rows`."""
        a_rows, b_rows, padded = [], [], {}
        zero = None
        scale = torch.cat([layer.slot_scale[s : s + 1] for s in (self.zero_slot if r is None else r[0] for r in self.rows)])
        for row in self.rows:
            pair = padded.get(row[0]) if row is not None else None
            if row is not None and pair is None:
                a = row[1].get(f"{layer.slot_name}.lora_A.weight")
                if a is not None:
                    bt = row[1][f"{layer.slot_name}.lora_B.weight"].t()
                    pad = self.max_rank - a.shape[0]  # as the slot holds it, so the numbers are the gathered ones
                    pair = padded[row[0]] = (F.pad(a, (0, 0, 0, pad)), F.pad(bt, (0, 0, 0, pad)))
            if pair is None:
                if zero is None:
                    zero = (layer.slot_A.new_zeros(layer.slot_A.shape[1:]), layer.slot_Bt.new_zeros(layer.slot_Bt.shape[1:]))
                pair = zero
            a_rows.append(pair[0])
            b_rows.append(pair[1])
        return torch.stack(a_rows), torch.stack(b_rows), scale

    def reserve_rows(self, names: Iterable[str], rows: int, dtype: torch.dtype) -> list["SlotGroup"]:
        """Preallocates, for the groups holding these layers, buffers of `rows` rows' gathered slots (`hoisted`);
        before any capture, so a graph's gathers write to fixed addresses. Returns the groups."""
        groups = self.groups_of(names)
        for group in groups:
            group.reserve(rows, dtype)
        return groups

    def groups_of(self, names: Iterable[str]) -> list["SlotGroup"]:
        """The groups holding these layers, in installation order."""
        names = frozenset(names)
        return [g for g in self.groups if names.intersection(g.names)]

    @contextmanager
    def hoisted(self, groups: Sequence["SlotGroup"]) -> Iterator[None]:
        """Forwards inside over exactly the index's rows read those rows' slots from the groups' row buffers,
        gathered here once per group (B scaled, in the buffers' dtype), instead of gathering them in every layer:
        ~6 small kernels per layer become ~4 per group, and the update is added in the second matmul (baddbmm)."""
        rows = self.active
        for group in groups:
            group.gather(self.index[:rows])
        try:
            yield
        finally:
            for group in groups:
                group.hoisted_rows = 0

    @contextmanager
    def forced_live(self, names: Iterable[str]) -> Iterator[None]:
        """Forwards inside compute the updates of exactly these layers, whatever the slots fill: a CUDA graph is
        captured (and, on the CPU, replayed) so, and serves every batch whose LoRAs fill no other layer."""
        previous, self.forced = self.forced, frozenset(names)
        try:
            yield
        finally:
            self.forced = previous

    # --- loading users -----------------------------------------------------------------------------------------

    @torch.no_grad()
    def clear_slot(self, slot: int) -> None:
        self._check(slot)
        for group in self.groups:
            group.A[slot].zero_()
            group.Bt[slot].zero_()
            group.scale[slot].zero_()
        self.filled.pop(slot, None)

    @torch.no_grad()
    def load_slot(
        self,
        slot: int,
        state_dict: dict[str, torch.Tensor],
        alpha: float | dict[str, float] | None = None,
        scale: float = 1.0,
    ) -> None:
        """Copies a LoRA (diffusers/peft keys) into `slot`; layers it does not name are zero there. `alpha` is one
        value or one per component ("unet", "text_encoder"); None means alpha = rank (scaling 1), as peft does
        without metadata. Raises ValueError (slot unchanged) for keys or shapes that do not fit."""
        self._check(slot)
        pairs: dict[str, dict[str, torch.Tensor]] = {}
        for key, tensor in state_dict.items():
            match = _KEY.fullmatch(key)
            if match is None:
                raise ValueError(f"unexpected LoRA key {key}")
            component, path = match.group(1), match.group(2)
            kind = _KIND[next(g for g in match.groups()[2:] if g)]
            # Files name text-encoder layers as kohya and ComfyUI expect (`text_model.encoder…`); transformers 5's
            # modules, which the slots wrap, have no `text_model.` level.
            if component == "text_encoder" and f"{component}.{path}" not in self.layers:
                path = path.removeprefix("text_model.")
            if f"{component}.{path}" not in self.layers:
                raise ValueError(f"LoRA key {key} names no slot layer")
            pairs.setdefault(f"{component}.{path}", {})[kind] = tensor
        for name, pair in pairs.items():
            if pair.keys() != {"A", "B"}:
                raise ValueError(f"LoRA layer {name} lacks its up or down matrix")
            layer, rank = self.layers[name], pair["A"].shape[0]
            a, b = pair["A"].reshape(rank, -1), pair["B"].reshape(pair["B"].shape[0], -1)
            if rank > self.max_rank:
                raise ValueError(f"LoRA rank {rank} is above the slots' {self.max_rank}")
            if a.shape[1] != layer.slot_A.shape[2] or b.shape != (layer.slot_Bt.shape[2], rank):
                raise ValueError(f"LoRA layer {name} has shapes {tuple(a.shape)}, {tuple(b.shape)}")
        self.clear_slot(slot)
        for name, pair in pairs.items():
            layer, rank = self.layers[name], pair["A"].shape[0]
            component = name.split(".", 1)[0]
            a_value = alpha.get(component) if isinstance(alpha, dict) else alpha
            layer.slot_A[slot, :rank].copy_(pair["A"].reshape(rank, -1))
            layer.slot_Bt[slot, :rank].copy_(pair["B"].reshape(-1, rank).t())
            layer.slot_scale[slot] = scale * (rank if a_value is None else a_value) / rank
        self.filled[slot] = frozenset(pairs)

    def load_slot_file(self, slot: int, path: str | Path, scale: float = 1.0) -> None:
        """A diffusers LoRA file as the engine writes it (alpha from its lora_adapter_metadata)."""
        tensors = safetensors.torch.load_file(str(path))
        with safe_open(str(path), "pt") as file:
            metadata = file.metadata() or {}
        shapes = json.loads(metadata.get("lora_adapter_metadata", "{}"))
        alphas = {c: float(shapes[f"{c}.lora_alpha"]) for c in ("unet", "text_encoder") if f"{c}.lora_alpha" in shapes}
        self.load_slot(slot, tensors, alphas or None, scale)

    @torch.no_grad()
    def set_scale(self, slot: int, alpha: float, rank: int, scale: float = 1.0) -> None:
        self._check(slot)
        for group in self.groups:
            group.scale[slot].fill_(scale * alpha / rank)

    # --- training ----------------------------------------------------------------------------------------------

    def trainable(self, slot: int, rank: int, names: Iterable[str] | None = None) -> dict[str, nn.Parameter]:
        """Leaf Parameters aliasing `slot`'s first `rank` rows/columns of the given layers (default all), named
        "<layer>.lora_A.weight" / "<layer>.lora_B.weight" in peft's layer order."""
        self._check(slot)
        if rank > self.max_rank:
            raise ValueError(f"rank {rank} is above the slots' {self.max_rank}")
        params = {}
        names = list(self.layers if names is None else names)
        for name in names:
            layer = self.layers[name]
            params[f"{name}.lora_A.weight"] = nn.Parameter(layer.slot_A.detach()[slot, :rank])
            params[f"{name}.lora_B.weight"] = nn.Parameter(layer.slot_Bt.detach()[slot, :rank].t())
        self.filled[slot] = self.filled.get(slot, frozenset()) | frozenset(names)
        return params

    def _check(self, slot: int) -> None:
        if not 0 <= slot < self.slots:
            raise ValueError(f"slot {slot} is not in 0..{self.slots - 1}")


class SlotLayer:
    """What SlotLinear and SlotConv2d share: the slot buffers and the gathered low-rank update."""

    # None on instances peft builds from our class (its Conv2d adapter layers use type(base_layer)): plain layers.
    lora: SlotLoRA | None = None

    @classmethod
    def adopt(cls, layer: nn.Module, lora: SlotLoRA, group: "SlotGroup", member: int) -> "SlotLayer":
        # Same parameters, hooks and attributes as `layer` (its weight and bias are the very same tensors).
        slotted = cls.__new__(cls)
        slotted.__dict__.update(layer.__dict__)
        slotted._parameters = dict(layer._parameters)
        slotted._buffers = dict(layer._buffers)
        slotted._modules = dict(layer._modules)
        slotted._non_persistent_buffers_set = set(layer._non_persistent_buffers_set)
        # Not a submodule: the table is shared by every layer and must not enter state_dict or .to() walks.
        object.__setattr__(slotted, "lora", lora)
        slotted.slot_group, slotted.slot_member = group, member
        # Views of the group's stacked buffers: slot_A[S + 1, R, in], slot_Bt[S + 1, R, out], slot_scale[S + 1].
        slotted.register_buffer("slot_A", group.A[:, member], persistent=False)
        slotted.register_buffer("slot_Bt", group.Bt[:, member], persistent=False)
        slotted.register_buffer("slot_scale", group.scale[:, member], persistent=False)
        return slotted

    def _gathered(self, batch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n = self.lora.active
        if batch % n:
            raise ValueError(f"a batch of {batch} does not fit a slot index of {n}")
        if self.lora.rows is not None:
            if batch != n:
                raise ValueError(f"a training batch of {batch} rows for {n} slot rows")
            return self.lora.row_weights(self)
        index = self.lora.index[:n]
        if batch != n:
            index = index.repeat(batch // n)  # cat([x] * k) layout: CFG's uncond/cond halves
        return self.slot_A[index], self.slot_Bt[index], self.slot_scale[index]


    def _with_slots(self, x: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
        """The base layer's `result` plus each sample's slot update, cast back to the result's dtype as peft does."""
        if self.lora is None or self.lora.active == 0 or not self.slot_live:
            return result
        group = self.slot_group
        if group.hoisted_rows == x.shape[0] and self.lora.rows is None and x.dtype == result.dtype == group.row_A.dtype:
            a, bt = group.row_A[: x.shape[0], self.slot_member], group.row_Bt[: x.shape[0], self.slot_member]
            return self._add_update(x, result, a, bt)
        a, b, scale = self._gathered(x.shape[0])
        if HALF_AT_INFERENCE and not torch.is_grad_enabled() and x.dtype != a.dtype:
            # Inference on a half-precision model: the update in the model's dtype, as peft computes it there
            # (its LoRA weights load in the model's dtype), not the whole activation cast up to the slots' float32.
            a, b, scale = a.to(x.dtype), b.to(x.dtype), scale.to(x.dtype)
        elif not torch.is_autocast_enabled(x.device.type):
            x = x.to(a.dtype)  # under autocast the matmuls take their own dtype: a cast here only copies
        delta = self._delta(x, a, b) * scale[:, None, None]
        return (result + delta.reshape(result.shape)).to(result.dtype)


class SlotLinear(SlotLayer, nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._with_slots(x, F.linear(x, self.weight, self.bias))

    @staticmethod
    def _delta(x: torch.Tensor, a: torch.Tensor, bt: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(x.shape[0], -1, x.shape[-1])  # [B, N, in]
        return torch.bmm(torch.bmm(flat, a.transpose(1, 2)), bt)

    @staticmethod
    def _add_update(x: torch.Tensor, result: torch.Tensor, a: torch.Tensor, bt: torch.Tensor) -> torch.Tensor:
        """result + (x @ a.T) @ bt, the sum in the second matmul (bt scaled already)."""
        n = x.shape[0]
        h = torch.bmm(x.reshape(n, -1, x.shape[-1]), a.transpose(1, 2))  # [B, N, R]
        return torch.baddbmm(result.reshape(n, -1, result.shape[-1]), h, bt).reshape(result.shape)


class SlotConv2d(SlotLayer, nn.Conv2d):
    """A 1x1 convolution: a Linear over channels at every pixel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._with_slots(x, self._conv_forward(x, self.weight, self.bias))

    @staticmethod
    def _delta(x: torch.Tensor, a: torch.Tensor, bt: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(x.shape[0], x.shape[1], -1)  # [B, in, HW]
        return torch.bmm(bt.transpose(1, 2), torch.bmm(a, flat))

    @staticmethod
    def _add_update(x: torch.Tensor, result: torch.Tensor, a: torch.Tensor, bt: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        h = torch.bmm(a, x.reshape(n, x.shape[1], -1))  # [B, R, HW]
        return torch.baddbmm(result.reshape(n, result.shape[1], -1), bt.transpose(1, 2), h).reshape(result.shape)


class SlotGroup:
    """The slot buffers of the layers of one kind and shape (e.g. the UNet's 320 -> 320 `to_q` layers), stacked:
    A[S + 1, L, R, in], Bt[S + 1, L, R, out], scale[S + 1, L]; each layer's buffers are its column of these. One
    slot's LoRA over all L layers is then one gather (SlotMerge)."""

    def __init__(self, lora: SlotLoRA, names: list[str], fan_in: int, fan_out: int):
        kw = dict(device=lora.device, dtype=lora.dtype)
        S, R, L = lora.slots + 1, lora.max_rank, len(names)
        self.names = names
        self.layers: list[SlotLayer] = []
        self.A = torch.zeros(S, L, R, fan_in, **kw)
        self.Bt = torch.zeros(S, L, R, fan_out, **kw)
        self.scale = torch.zeros(S, L, **kw)
        # SlotLoRA.hoisted: rows' gathered slots, [rows, L, R, in] and [rows, L, R, out] (B times its scale).
        self.row_A: torch.Tensor | None = None
        self.row_Bt: torch.Tensor | None = None
        self.hoisted_rows = 0

    def reserve(self, rows: int, dtype: torch.dtype) -> None:
        if self.row_A is None or len(self.row_A) < rows or self.row_A.dtype != dtype:
            self.row_A = self.A.new_zeros((rows,) + self.A.shape[1:], dtype=dtype)
            self.row_Bt = self.Bt.new_zeros((rows,) + self.Bt.shape[1:], dtype=dtype)

    def gather(self, index: torch.Tensor) -> None:
        rows = len(index)
        if self.row_A is None or len(self.row_A) < rows:
            raise ValueError(f"{rows} rows hoisted where {0 if self.row_A is None else len(self.row_A)} are reserved")
        self.row_A[:rows].copy_(self.A[index])
        self.row_Bt[:rows].copy_(self.Bt[index] * self.scale[index][:, :, None, None])
        self.hoisted_rows = rows


class SlotMerge:
    """One slot's LoRA added into the base weights of slot layers, and taken out again: a batch whose rows all have
    one slot (one image with CFG) then runs the plain model. Its LoRA costs a gather and a batched matmul per layer
    group and two multi-tensor passes per call, where the slot layers launch ~5 small kernels per layer (128 layers
    in the UNet's attention). `add()` reads the slot from row 0 of the table's index buffer, so a CUDA graph
    captured over add / forward / `restore()` serves every user. `restore()` copies the base weights back from a copy
    kept here (subtracting would leave half-precision rounding behind).

    It merges every layer of each group that holds one of `names`: others of such a group add their slot's update,
    which is zero unless the slot fills them (a caller sends such LoRAs elsewhere, as FastGenerator.predict does)."""

    def __init__(self, lora: SlotLoRA, names: Iterable[str]):
        names = frozenset(names)
        self.lora = lora
        self.groups = [g for g in lora.groups if names.intersection(g.names)]
        self.weights = [layer.weight for g in self.groups for layer in g.layers]
        self.base = [w.detach().clone() for w in self.weights]

    @torch.no_grad()
    def add(self) -> None:
        slot = self.lora.index[:1]
        deltas = []
        for group in self.groups:
            # In the weights' dtype (fp32 accumulation): a half-precision delta is half the memory traffic of a
            # float32 one, and it is rounded to the weights' dtype before the add either way.
            dtype = group.layers[0].weight.dtype
            a = group.A.index_select(0, slot)[0].to(dtype)  # [L, R, in]
            bt = (group.Bt.index_select(0, slot)[0] * group.scale.index_select(0, slot)[0][:, None, None]).to(dtype)
            delta = torch.bmm(bt.transpose(1, 2), a)  # [L, out, in]
            deltas.extend(d.view(layer.weight.shape) for d, layer in zip(delta.unbind(0), group.layers))
        torch._foreach_add_(self.weights, deltas)

    @torch.no_grad()
    def restore(self) -> None:
        torch._foreach_copy_(self.weights, self.base)


# --- peft's view of a slot: initialization and saving ---------------------------------------------------------


def peft_skeleton(lora: SlotLoRA, prefix: str, dtype: torch.dtype) -> nn.Module:
    """A module tree with, at the same paths as `prefix`'s slot layers, weightless stand-ins of the same class and
    shape (`dtype`, on the CPU). peft's `inject_adapter_in_model` on it draws exactly the random numbers it draws on
    the real model (same layers in the same order: peft initializes adapters on the CPU), and peft's state-dict and
    diffusers' save functions read it as they read the real model, so the files are the same."""
    root = nn.Module()
    for name, layer in lora.layers.items():
        component, _, path = name.partition(".")
        if component != prefix:
            continue
        parent = root
        *parents, leaf = path.split(".")
        for part in parents:
            if part not in parent._modules:
                parent.add_module(part, nn.Module())
            parent = parent._modules[part]
        if isinstance(layer, nn.Conv2d):
            stand_in = torch.nn.utils.skip_init(
                nn.Conv2d, layer.in_channels, layer.out_channels, 1, bias=layer.bias is not None, device="meta"
            )
        else:
            stand_in = torch.nn.utils.skip_init(
                nn.Linear, layer.in_features, layer.out_features, bias=layer.bias is not None, device="meta"
            )
        # Expanded scalars: the right shape, device and dtype for peft, and no memory.
        for key, value in list(stand_in._parameters.items()):
            if value is not None:
                stand_in._parameters[key] = nn.Parameter(
                    torch.zeros((), dtype=dtype).expand(value.shape), requires_grad=False
                )
        parent.add_module(leaf, stand_in)
    return root


def peft_weights(skeleton: nn.Module, prefix: str, adapter: str) -> dict[str, torch.Tensor]:
    """The adapter's matrices in a skeleton, keyed like `trainable`'s names, as [r, in] and [out, r]."""
    weights = {}
    for path, module in skeleton.named_modules():
        if hasattr(module, "lora_A") and adapter in getattr(module, "lora_A", {}):
            a, b = module.lora_A[adapter].weight, module.lora_B[adapter].weight
            weights[f"{prefix}.{path}.lora_A.weight"] = a.detach().reshape(a.shape[0], -1)
            weights[f"{prefix}.{path}.lora_B.weight"] = b.detach().reshape(b.shape[0], -1)
    return weights


@torch.no_grad()
def set_peft_weights(skeleton: nn.Module, prefix: str, adapter: str, weights: dict[str, torch.Tensor]) -> None:
    """Copies `trainable`-named weights into the skeleton's peft layers (to save them with peft/diffusers)."""
    for path, module in skeleton.named_modules():
        if hasattr(module, "lora_A") and adapter in getattr(module, "lora_A", {}):
            for kind, target in (("A", module.lora_A[adapter].weight), ("B", module.lora_B[adapter].weight)):
                target.copy_(weights[f"{prefix}.{path}.lora_{kind}.weight"].reshape(target.shape))
