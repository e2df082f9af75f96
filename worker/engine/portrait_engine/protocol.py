"""The engine's JSON-lines protocol: one request per stdin line, events on stdout.

These models are the single Python definition of the protocol; the TypeScript side is tested against the same JSON
fixtures in test/fixtures/engine-protocol/.
"""

import os
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Discriminator, Field, Tag, TypeAdapter

ErrorCode = Literal["bad_request", "not_found", "cancelled", "busy", "internal"]
SchedulerName = Literal["unipc", "dpmpp_2m_karras", "euler_a", "ddim"]
MixedPrecision = Literal["no", "fp16", "bf16"]
# UNet linear layers a LoRA may target (attention projections first; the rest are the other nn.Linear in its blocks).
TargetModule = Literal["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2"]

MAX_SEED = 2**32 - 1


def _absolute(path: str) -> str:
    # The engine's working directory is not the caller's, so relative paths would silently point elsewhere.
    if not os.path.isabs(path):
        raise ValueError("must be an absolute path")
    return path


def _safetensors(path: str) -> str:
    if not path.endswith(".safetensors"):
        raise ValueError("must end with .safetensors")
    return path


AbsPath = Annotated[str, AfterValidator(_absolute)]
LoraPath = Annotated[AbsPath, AfterValidator(_safetensors)]
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]
ImageSide = Annotated[int, Field(ge=64, le=1024, multiple_of=8)]


class _Strict(BaseModel):
    # Unknown fields are rejected so that a misspelt parameter is an error, not a silently ignored default; strict
    # types so that "20" is not taken for 20 (an integer is still accepted where a float is expected).
    model_config = ConfigDict(extra="forbid", strict=True)


class _Request(_Strict):
    id: str = Field(min_length=1, max_length=200)


# --- requests ---------------------------------------------------------------------------------------------------


class PingRequest(_Request):
    op: Literal["ping"]


class CancelRequest(_Request):
    op: Literal["cancel"]
    target: str = Field(min_length=1, max_length=200)


class TrainParams(_Strict):
    """DreamBooth-LoRA hyper-parameters; defaults are those of the seed experiments."""

    rank: int = Field(4, ge=1, le=128)
    alpha: float = Field(4.0, gt=0, le=1024)
    learning_rate: float = Field(1e-4, gt=0, le=1)
    max_steps: int = Field(400, ge=1, le=20_000)
    batch_size: int = Field(1, ge=1, le=32)
    grad_accum: int = Field(2, ge=1, le=64)
    resolution: ImageSide = 512
    # None means the engine's default for the dtype the base model was loaded in ("no" for float32, else that dtype).
    mixed_precision: MixedPrecision | None = None
    seed: Seed = 0
    instance_prompt: str = Field("a photo of sks person", min_length=1, max_length=1000)
    lr_scheduler: Literal[
        "constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial"
    ] = "constant"
    lr_warmup_steps: int = Field(0, ge=0, le=20_000)
    target_modules: list[TargetModule] = Field(
        default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"], min_length=1
    )


class TrainRequest(_Request):
    op: Literal["train"]
    photos: list[AbsPath] = Field(min_length=1, max_length=200)
    output: LoraPath
    params: TrainParams = Field(default_factory=TrainParams)


class GenerateRequest(_Request):
    op: Literal["generate"]
    prompt: str = Field(max_length=2000)
    negative_prompt: str = Field("", max_length=2000)
    lora: LoraPath | None = None
    lora_scale: float = Field(1.0, ge=0, le=2)
    control_image: AbsPath | None = None
    controlnet_scale: float = Field(1.0, ge=0, le=2)
    steps: int = Field(20, ge=1, le=100)
    guidance_scale: float = Field(7.5, ge=0, le=30)
    # None picks a random seed; the result always reports the seed used.
    seed: Seed | None = None
    width: ImageSide = 512
    height: ImageSide = 512
    num_images: int = Field(1, ge=1, le=4)
    scheduler: SchedulerName = "unipc"
    output_dir: AbsPath


Request = Annotated[PingRequest | CancelRequest | TrainRequest | GenerateRequest, Field(discriminator="op")]
REQUEST = TypeAdapter(Request)

# --- events -----------------------------------------------------------------------------------------------------


class _Event(_Strict):
    id: str


class ReadyEvent(_Strict):
    id: None = None
    event: Literal["ready"] = "ready"
    profile: str
    device: str


class ProgressEvent(_Event):
    event: Literal["progress"] = "progress"
    step: int = Field(ge=0)
    total: int = Field(ge=1)
    # Only training reports a loss; generation progress omits the field.
    loss: float | None = Field(None, exclude_if=lambda loss: loss is None)


class PongResult(_Event):
    event: Literal["result"] = "result"
    pong: Literal[True] = True
    profile: str
    device: str
    versions: dict[str, str]


class CancelResult(_Event):
    event: Literal["result"] = "result"
    cancelled: bool


class TrainResult(_Event):
    event: Literal["result"] = "result"
    output: str
    steps: int
    final_loss: float
    losses: list[float]
    seconds: float
    params: TrainParams


class GenerateResult(_Event):
    event: Literal["result"] = "result"
    images: list[str]
    seed: Seed
    seconds: float


class ErrorEvent(_Strict):
    # id is null only when the request line could not be read at all (invalid JSON, no string id).
    id: str | None
    event: Literal["error"] = "error"
    code: ErrorCode
    message: str


# Every result shares event="result"; the field only it carries tells which request it answers.
_RESULT_TAGS = {"pong": "pong", "cancelled": "cancel", "output": "train", "images": "generate"}


def _event_tag(value: Any) -> str | None:
    fields = value if isinstance(value, dict) else vars(value)
    event = fields.get("event")
    if event != "result":
        return event
    return next((tag for key, tag in _RESULT_TAGS.items() if key in fields), None)


Event = Annotated[
    Annotated[ReadyEvent, Tag("ready")]
    | Annotated[ProgressEvent, Tag("progress")]
    | Annotated[ErrorEvent, Tag("error")]
    | Annotated[PongResult, Tag("pong")]
    | Annotated[CancelResult, Tag("cancel")]
    | Annotated[TrainResult, Tag("train")]
    | Annotated[GenerateResult, Tag("generate")],
    Discriminator(_event_tag),
]
EVENT = TypeAdapter(Event)
