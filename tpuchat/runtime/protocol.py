"""What crosses the pipe between the engine worker and its client.

The parent sends one request object at a time; the worker answers each with
one event (Opened, Reply or Failed), except Generate, which is answered by
Token events and then one Done (or Failed).  Cancel is never answered: it
stops a running generation within one token.  Everything here pickles with
the standard library alone (no cffi, no numpy), so both sides import it.

ModelDesc and GenerationStats are the two records every front end reads.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Dict, List, Optional, Union


# -- records ---------------------------------------------------------------


@dataclass
class DeviceStat:
    devid: int
    mem_total_mb: int
    mem_used_mb: int
    tpu_util: int
    # This device's share of the model's KV cache: the shim checks at open
    # that a multi-device bmodel splits the KV heads equally.
    kv_heads: int = 0
    kv_cache_bytes: int = 0


@dataclass
class RuntimeInfo:
    """The runtime library the worker loaded."""

    path: str = ""
    kind: str = ""  # "device" | "simulator" | "fake"
    version: str = ""


@dataclass
class ModelDesc:
    """What a bmodel is, as read from its nets by the shim (plus, once the
    worker opened it, the runtime it runs on and its --model a,b family)."""

    path: str
    file_size: int
    chip: Optional[str]
    toolchain: Optional[str]
    num_layers: int
    seq_len: int
    kv_len: int
    hidden_size: int
    kv_heads: int
    head_dim: int
    dtype: str
    quantization: str
    addr_mode: int
    dynamic: bool
    prefill_has_mask: bool
    stages: List[int]
    num_device: int
    lm_head: str  # "top1" or "logits"
    vocab_size: int  # 0 for a top-1 build: the shim never sees the logits
    heads: List[str]
    block_kv: bool
    kv_cache_bytes: int
    nets: List[str]
    convention: str = ""  # the bmodel convention the shim matched ("llm_convert", "Qwen-TPU (...)", ...)
    decode_embed: str = ""  # how decode tokens are embedded
    kv_layout: str = "rows"  # "rows": K/V row p at index p; "sliding": one K|V window, right-aligned (WizardCoder)
    devices: List[DeviceStat] = field(default_factory=list)
    # Vision (Llama-3.2-Vision style): read from the vit net and the layers' inputs.
    has_vision: bool = False
    vision_tiles: int = 0  # tiles the vit takes per image
    image_size: int = 0  # tile edge in pixels
    image_patches: int = 0  # image states per tile
    cross_layers: List[int] = field(default_factory=list)  # cross-attention layer indices
    image_kv_bytes: int = 0  # device bytes of the image K/V of all cross layers
    runtime: Optional[RuntimeInfo] = None  # set by the worker
    family: Optional[Dict[str, Any]] = None  # members and weight sharing of --model a,b (Engine.family_info)

    @property
    def can_sample(self) -> bool:
        """The one rule, the shim's (tpc_set_sampling): lm_head hands logits to the host.  A
        sample_head/penalty_sample_head takes those logits, so it never comes without them."""
        return self.lm_head == "logits"

    @property
    def name(self) -> str:
        return self.path.replace("\\", "/").rsplit("/", 1)[-1]

    def to_dict(self) -> dict:
        """For JSON output (`info --json`); can_sample included."""
        d = asdict(self)
        d["can_sample"] = self.can_sample
        if d["runtime"] is None:
            del d["runtime"]
        if d["family"] is None:
            del d["family"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelDesc":
        """The inverse of to_dict (unknown keys ignored)."""
        known = {f.name for f in fields(cls)}
        args = {k: v for k, v in d.items() if k in known}
        args["devices"] = [x if isinstance(x, DeviceStat) else DeviceStat(**x) for x in d.get("devices", [])]
        rt = d.get("runtime")
        if isinstance(rt, dict):
            args["runtime"] = RuntimeInfo(**{k: rt.get(k, "") for k in ("path", "kind", "version")})
        return cls(**args)


@dataclass
class GenerationStats:
    """How one answer went.  Messages read back from the store carry only
    some fields: the others are None there."""

    prompt_tokens: int = 0
    new_tokens: int = 0
    ftl_s: float = 0.0  # prompt in -> first token out (the prefill call)
    decode_s: float = 0.0  # wall time of all decode steps
    tokens_per_s: float = 0.0  # decode steps per second
    device_ms_per_token: float = 0.0  # per decode step, inside runtime calls
    # Per decode step, all host time of a token: the engine loop (shim, Python)
    # and, once the client received it, the pipe and the parent (see EngineClient.generate).
    host_us_per_token: float = 0.0
    worker_host_us_per_token: float = 0.0  # the part spent in the worker (decode call minus device time, loop)
    prefill_device_s: float = 0.0
    reused_tokens: int = 0  # prompt tokens whose KV rows were already cached
    launches_per_token: float = 0.0
    copies_per_token: float = 0.0
    stop_reason: str = ""  # eos | max_tokens | context_full | cancelled (| failed, set by front ends)
    bmodel: str = ""  # with --model a,b: the member that answered (file name)
    switch_s: float = 0.0  # time spent loading that member before this answer (0: it was loaded)
    vit_s: float = 0.0  # time of the vit run for this answer's image (0: the held image was reused)
    image_reused: bool = False  # the image K/V already on the device served this answer
    # Prompt-lookup decoding (block_kv builds, greedy): chunk passes, the drafted tokens they checked and
    # those the model agreed with; weight passes per token after the first (1.0: plain decoding).
    lookup_chunks: int = 0
    lookup_drafted: int = 0
    lookup_accepted: int = 0
    passes_per_token: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Optional[dict]) -> "GenerationStats":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in (d or {}).items() if k in known})

    @classmethod
    def partial(cls, **values) -> "GenerationStats":
        """Stats with only `values` known (the rest None): live figures, stored messages."""
        st = cls(**{f.name: None for f in fields(cls)})
        for k, v in values.items():
            setattr(st, k, v)
        return st


def can_sample(desc: Optional[ModelDesc]) -> bool:
    """Whether sampling settings can apply (False when no model is open)."""
    return desc is not None and desc.can_sample


def samples(sample: Any, temperature: float) -> bool:
    """Whether these settings sample at all: a temperature of about 0 is greedy (the shim's rule
    too, native/heads.c)."""
    return bool(sample) and temperature > 1e-5


# -- requests (parent -> worker) --------------------------------------------


@dataclass
class Open:
    bmodel: str
    devids: List[int]
    lib_dir: Optional[str] = None
    # why an earlier worker's shared weight load was refused: load each member whole
    share_refused: str = ""


@dataclass
class Generate:
    """Stream one answer.  image may come without pixel values when the worker
    already holds that image (same digest); gen tags the events so the parent
    can drop those of an abandoned generation."""

    ids: List[int]
    max_new_tokens: int = 256
    stop_ids: List[int] = field(default_factory=list)
    sampling: Optional[dict] = None
    reuse: Union[bool, str] = True  # True, "always" or False: see Engine.generate
    image: Any = None  # ImageInputs
    image_pos: Optional[int] = None
    gen: int = 0
    lookup: Union[bool, str] = True  # True, "always" or False: see Engine.generate


@dataclass
class PinPrefix:
    ids: List[int]


@dataclass
class ForcedPicks:
    ids: List[int]
    continuation: List[int]


@dataclass
class ImageStates:
    pass


@dataclass
class Devices:
    lib_dir: Optional[str] = None


@dataclass
class Cancel:
    pass


@dataclass
class Close:
    pass


# -- events (worker -> parent) ----------------------------------------------


@dataclass
class Opened:
    desc: ModelDesc


@dataclass
class Token:
    gen: int
    id: int


@dataclass
class Done:
    gen: int
    stats: GenerationStats


@dataclass
class Reply:
    """The answer to PinPrefix, ForcedPicks, ImageStates, Devices."""

    value: Any


@dataclass
class Failed:
    kind: str  # the TpuchatError subclass name
    message: str

    def exception(self):
        from ..errors import ERROR_TYPES, TpuchatError

        return ERROR_TYPES.get(self.kind, TpuchatError)(self.message)
