"""The engine's JSON-lines protocol: one request per stdin line, events on stdout.

These models are the single Python definition of the protocol; the TypeScript side is tested against the same JSON
fixtures in test/fixtures/engine-protocol/.
"""

import os
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Discriminator, Field, Tag, TypeAdapter, model_validator

ErrorCode = Literal["bad_request", "not_found", "cancelled", "busy", "internal"]
SchedulerName = Literal["unipc", "dpmpp_2m_karras", "euler_a", "ddim"]
MixedPrecision = Literal["no", "fp16", "bf16"]
TrainMode = Literal["lora", "full"]
LrScheduler = Literal["constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial"]
# UNet layers a LoRA may target (attention projections first, then the transformer blocks' other layers: SD1.5's
# proj_in/proj_out are 1x1 convolutions, the feed-forward ones nn.Linear). Every one exports to both LoRA formats.
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
    """DreamBooth hyper-parameters, each with the meaning of diffusers' examples/dreambooth scripts; defaults are those
    of the seed experiments. None means "the engine decides" and the result reports what it chose."""

    # lora: a LoRA on the UNet (train_dreambooth_lora.py). full: every UNet weight (train_dreambooth.py), an
    # operator's tool: the output is the whole UNet.
    mode: TrainMode = "lora"
    rank: int = Field(4, ge=1, le=128)
    alpha: float = Field(4.0, gt=0, le=1024)
    # None: the seed's 1e-4 for lora, 5e-6 for full.
    learning_rate: float | None = Field(None, gt=0, le=1)
    # Optimizer steps. `epochs` instead counts passes over the photos; give one or the other.
    max_steps: int = Field(400, ge=1, le=20_000)
    epochs: int | None = Field(None, ge=1, le=10_000)
    batch_size: int = Field(1, ge=1, le=32)
    grad_accum: int = Field(2, ge=1, le=64)
    # Photos are never upscaled to it: a photo whose shorter side is below it is refused.
    resolution: ImageSide = 512
    # None means the engine's default for the dtype the base model was loaded in ("no" for float32, else that dtype).
    mixed_precision: MixedPrecision | None = None
    seed: Seed = 0
    instance_prompt: str = Field("a photo of sks person", min_length=1, max_length=1000)
    lr_scheduler: LrScheduler = "constant"
    lr_warmup_steps: int = Field(0, ge=0, le=20_000)
    target_modules: list[TargetModule] = Field(
        default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"], min_length=1
    )
    # bitsandbytes' AdamW8bit; where bitsandbytes is missing, AdamW with a warning in the result.
    use_8bit_adam: bool = False
    # Save a resumable checkpoint every N optimizer steps (seed: 200 for LoRA, 1000 for full).
    checkpoint_steps: int | None = Field(None, ge=1, le=20_000)
    # lora mode only: a LoRA on the text encoder's attention too, with the same rank and alpha.
    train_text_encoder: bool = False
    # Prior preservation (used when the request has class_photos).
    class_prompt: str = Field("a photo of a person", min_length=1, max_length=1000)
    prior_loss_weight: float = Field(1.0, ge=0, le=100)
    # Min-SNR loss weighting (https://arxiv.org/abs/2303.09556; the seed's 5.0), and offset noise (the reference's
    # --offset_noise is 0.1). Off by default.
    snr_gamma: float | None = Field(None, gt=0, le=100)
    noise_offset: float = Field(0.0, ge=0, le=1)

    @model_validator(mode="after")
    def _consistent(self) -> "TrainParams":
        if self.mode == "full" and self.train_text_encoder:
            raise ValueError("train_text_encoder is for lora mode; full mode trains the UNet only")
        return self


class TrainRequest(_Request):
    op: Literal["train"]
    photos: list[AbsPath] = Field(min_length=1, max_length=200)
    output: LoraPath
    # Prior preservation: generic photos of the class (e.g. other people), trained with params.class_prompt.
    class_photos: list[AbsPath] | None = Field(None, min_length=1, max_length=1000)
    # Where checkpoints go (default: beside output, "<output>.checkpoints"). A request whose folder holds a checkpoint
    # of the same job (same photos, parameters and base model) resumes from it.
    checkpoint_dir: AbsPath | None = None
    params: TrainParams = Field(default_factory=TrainParams)
    # Intermediate previews: this many sample portraits painted with the LoRA as it stands, evenly spaced before the
    # last step (0: none), each in `preview_steps` denoising steps, written into `preview_dir` (default: beside
    # output). They do not change what the job trains.
    previews: int = Field(0, ge=0, le=10)
    preview_steps: int = Field(4, ge=1, le=50)
    preview_dir: AbsPath | None = None

    @model_validator(mode="after")
    def _one_length(self) -> "TrainRequest":
        # Checked on the request only: a result reports both, the max_steps the epochs came to.
        if self.params.epochs is not None and "max_steps" in self.params.model_fields_set:
            raise ValueError("params: give max_steps or epochs, not both")
        return self


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
    # The fast path's warm-up (seconds, peak GPU memory, captured batch sizes, what was compiled); absent when off.
    info: dict[str, Any] | None = Field(None, exclude_if=lambda info: info is None)


class ProgressEvent(_Event):
    event: Literal["progress"] = "progress"
    step: int = Field(ge=0)
    total: int = Field(ge=1)
    # Only training reports a loss; generation progress omits the field.
    loss: float | None = Field(None, exclude_if=lambda loss: loss is None)


class PreviewEvent(_Event):
    """A sample portrait painted with a training's LoRA after optimizer step `step` of `total`."""

    event: Literal["preview"] = "preview"
    step: int = Field(ge=1)
    total: int = Field(ge=1)
    image: str


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
    # The same LoRA in kohya's format, for A1111 and ComfyUI (lora mode only).
    kohya_output: str | None = Field(None, exclude_if=lambda path: path is None)
    steps: int
    final_loss: float
    losses: list[float]
    seconds: float
    params: TrainParams
    # The optimizer step of the checkpoint this run resumed from.
    resumed_from: int | None = Field(None, exclude_if=lambda step: step is None)
    # Things the caller asked for that the engine could not do exactly (e.g. 8-bit Adam without bitsandbytes).
    warnings: list[str] = Field(default_factory=list, exclude_if=lambda warnings: not warnings)


class GenerateResult(_Event):
    event: Literal["result"] = "result"
    # The images written, in request order, without those the safety check withheld.
    images: list[str]
    # Indexes (into the request's num_images) of the images the safety check withheld; none were written.
    flagged: list[int] = Field(default_factory=list)
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
    | Annotated[PreviewEvent, Tag("preview")]
    | Annotated[ErrorEvent, Tag("error")]
    | Annotated[PongResult, Tag("pong")]
    | Annotated[CancelResult, Tag("cancel")]
    | Annotated[TrainResult, Tag("train")]
    | Annotated[GenerateResult, Tag("generate")],
    Discriminator(_event_tag),
]
EVENT = TypeAdapter(Event)
