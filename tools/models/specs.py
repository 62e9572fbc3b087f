"""Model specs: a role bound to where its weights are and how to run them, and the presets limner knows.

A GPU user picks presets by name (limner.toml `roles`, LIMNER_<ROLE>_MODEL, a tool's `model`); the tiny ones
are random-weight twins built from configs (tools/models/twins.py) for offline runs and the tests.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Role = Literal[
    "generator", "inpainter", "editor", "clip", "vlm", "lpips", "detector", "segmenter", "upscaler"
]
TINY_LABEL = "tiny-random"


class LoraSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    source: str = Field(description="Hub id or local folder/file of the LoRA weights.")
    weight_name: str | None = None
    scale: float = 1.0


class IPAdapterSpec(BaseModel):
    """An IP-Adapter for a generator: where `load_ip_adapter` reads its weights and CLIP vision encoder."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str
    source: str = Field(description="Hub id or local folder; `tiny:<kind>` for a built tiny twin.")
    subfolder: str = Field(description="Folder inside source holding weight_name, e.g. sdxl_models.")
    weight_name: str = Field(description="The adapter's weights file, e.g. ip-adapter_sdxl.safetensors.")
    image_encoder_folder: str = Field(
        default="image_encoder", description="The CLIP vision encoder's folder inside subfolder."
    )

    @property
    def tiny_kind(self) -> str | None:
        return self.source.removeprefix("tiny:") if self.source.startswith("tiny:") else None


# h94/IP-Adapter's SDXL adapter (ViT-bigG image encoder); generate's `references` go through it
IP_ADAPTER_SDXL = IPAdapterSpec(
    name="ip-adapter-sdxl",
    source="h94/IP-Adapter",
    subfolder="sdxl_models",
    weight_name="ip-adapter_sdxl.safetensors",
)
# its tiny twin (tools/models/twins/ip_adapter.py): the same layout, sized for the tiny SDXL UNet
TINY_IP_ADAPTER_SDXL = IP_ADAPTER_SDXL.model_copy(
    update={"name": "tiny-ip-adapter-sdxl", "source": "tiny:ip-adapter-sdxl"}
)
# the SD 1.5 adapter (ViT-H image encoder), for an SD 1.x generator of your own; its tiny twin serves `tiny`
IP_ADAPTER_SD15 = IPAdapterSpec(
    name="ip-adapter-sd15",
    source="h94/IP-Adapter",
    subfolder="models",
    weight_name="ip-adapter_sd15.safetensors",
)
TINY_IP_ADAPTER_SD15 = IP_ADAPTER_SD15.model_copy(
    update={"name": "tiny-ip-adapter-sd15", "source": "tiny:ip-adapter-sd15"}
)


class ModelSpec(BaseModel):
    """One model: where its weights are and how to run it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    role: Role
    source: str = Field(
        description="Hub id or local folder; `tiny:<kind>` for a built tiny model; for lpips a folder (relative: "
        "under models_path) holding torchvision's alexnet-owt-7be5be79.pth and lpips' v0.1 alex.pth."
    )
    pipeline: str | None = Field(
        default=None, description="diffusers/transformers class name; default: the Auto class for the role."
    )
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    device: str = Field(
        default="auto", pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$", description="auto, cpu, mps, cuda or cuda:N."
    )
    lora: tuple[LoraSpec, ...] = ()
    ip_adapter: IPAdapterSpec | None = Field(
        default=None, description="The IP-Adapter generate's `references` use (SD/SDXL generators)."
    )
    focus_size: int = Field(
        default=1024, gt=0, description="Native resolution (pixels per side) of the model."
    )
    size_factor: int = Field(default=8, gt=0, description="Width and height must be multiples of this.")
    default_steps: int = Field(default=4, gt=0)
    default_guidance: float = Field(default=0.0, ge=0)
    vram_gb: float | None = Field(default=None, description="Approximate GPU memory need (documentation).")
    gpu_fraction: float | None = Field(
        default=None,
        gt=0,
        le=64,
        description="runner = ray: GPUs a replica serving this model asks for (0.25: four share a GPU); "
        "default: 1 for generator, inpainter and editor, 0.25 for the judge and detector models.",
    )

    @model_validator(mode="after")
    def _focus_fits_the_factor(self) -> ModelSpec:
        # refine_region crops at focus_size and generate defaults to it: both must be valid sizes
        if self.focus_size % self.size_factor:
            raise ValueError(
                f"focus_size {self.focus_size} must be a multiple of size_factor {self.size_factor}"
            )
        return self

    @property
    def tiny_kind(self) -> str | None:
        return self.source.removeprefix("tiny:") if self.source.startswith("tiny:") else None


PRESETS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="sdxl-turbo",
            role="generator",
            source="stabilityai/sdxl-turbo",
            dtype="float16",
            ip_adapter=IP_ADAPTER_SDXL,
            focus_size=512,
            default_steps=4,
            default_guidance=0.0,
            vram_gb=8,
        ),
        ModelSpec(
            name="flux-schnell",
            role="generator",
            source="black-forest-labs/FLUX.1-schnell",
            pipeline="FluxPipeline",
            dtype="bfloat16",
            focus_size=1024,
            size_factor=16,
            default_steps=4,
            default_guidance=0.0,
            vram_gb=33,
        ),
        ModelSpec(
            name="sdxl-inpaint",
            role="inpainter",
            source="diffusers/stable-diffusion-xl-1.0-inpainting-0.1",
            dtype="float16",
            focus_size=1024,
            default_steps=25,
            default_guidance=7.5,
            vram_gb=10,
        ),
        # refine_region's editor backend (RefineAnything's base model; images = [crop, reference]). The
        # RefineAnything LoRA is added in limner.toml by redefining this model with
        # `lora = [{ source = "/path/to/refineanything-lora" }]` (loaded through peft).
        ModelSpec(
            name="qwen-image-edit",
            role="editor",
            source="Qwen/Qwen-Image-Edit-2509",
            pipeline="QwenImageEditPlusPipeline",
            dtype="bfloat16",
            focus_size=1024,
            size_factor=16,
            default_steps=28,
            default_guidance=4.0,
            vram_gb=60,
        ),
        ModelSpec(name="clip-vit-l14", role="clip", source="openai/clip-vit-large-patch14", focus_size=224),
        ModelSpec(
            name="qwen2.5-vl-3b",
            role="vlm",
            source="Qwen/Qwen2.5-VL-3B-Instruct",
            dtype="bfloat16",
            focus_size=448,
            vram_gb=8,
        ),
        ModelSpec(
            name="tiny",
            role="generator",
            source="tiny:text2image",
            ip_adapter=TINY_IP_ADAPTER_SD15,
            focus_size=64,
            default_steps=4,
            dtype="float32",
        ),
        ModelSpec(
            name="tiny-inpaint",
            role="inpainter",
            source="tiny:inpaint",
            focus_size=64,
            default_steps=4,
            dtype="float32",
        ),
        # tiny twins of the SDXL and FLUX presets: the same pipeline classes, so their code paths (two text
        # encoders and add_time_ids; T5 with max_sequence_length, 16 px factor, no CFG) run offline
        ModelSpec(
            name="tiny-sdxl-turbo",
            role="generator",
            source="tiny:sdxl",
            pipeline="StableDiffusionXLPipeline",
            ip_adapter=TINY_IP_ADAPTER_SDXL,
            focus_size=64,
            default_steps=4,
            default_guidance=0.0,
            dtype="float32",
        ),
        ModelSpec(
            name="tiny-sdxl-inpaint",
            role="inpainter",
            source="tiny:sdxl-inpaint",
            pipeline="StableDiffusionXLInpaintPipeline",
            focus_size=64,
            default_steps=4,
            default_guidance=7.5,  # as sdxl-inpaint's: its negative prompt and CFG batch run here too
            dtype="float32",
        ),
        ModelSpec(
            name="tiny-flux-schnell",
            role="generator",
            source="tiny:flux",
            pipeline="FluxPipeline",
            focus_size=64,
            size_factor=16,
            default_steps=4,
            default_guidance=0.0,
            dtype="float32",
        ),
        ModelSpec(name="tiny-clip", role="clip", source="tiny:clip", focus_size=32, dtype="float32"),
        ModelSpec(name="tiny-vlm", role="vlm", source="tiny:vlm", focus_size=56, dtype="float32"),
        # tiny twins of the judge presets clip-vit-l14 and qwen2.5-vl-3b: the same classes (CLIPModel with 14 px
        # patches; Qwen2_5_VLForConditionalGeneration with its pixel-budget image processor and chat template)
        ModelSpec(
            name="tiny-clip-vit-l14", role="clip", source="tiny:clip-vit-l14", focus_size=56, dtype="float32"
        ),
        ModelSpec(
            name="tiny-qwen2.5-vl-3b",
            role="vlm",
            source="tiny:qwen2.5-vl",
            pipeline="Qwen2_5_VLForConditionalGeneration",
            focus_size=56,
            dtype="float32",
        ),
        # locate's open-vocabulary detectors (boxes for named objects) and the segmenter that turns a box
        # into a mask; focus_size is the side their image processors resize to
        ModelSpec(
            name="grounding-dino-tiny",
            role="detector",
            source="IDEA-Research/grounding-dino-tiny",
            pipeline="GroundingDinoForObjectDetection",
            focus_size=800,
            vram_gb=1,
        ),
        ModelSpec(
            name="owlv2-base",
            role="detector",
            source="google/owlv2-base-patch16-ensemble",
            pipeline="Owlv2ForObjectDetection",
            focus_size=960,
            vram_gb=1,
        ),
        ModelSpec(
            name="sam-vit-base",
            role="segmenter",
            source="facebook/sam-vit-base",
            pipeline="SamModel",
            focus_size=1024,
            vram_gb=1,
        ),
        # their tiny twins (tools/models/twins/detect.py): the same classes and processors at 64 px
        ModelSpec(
            name="tiny-grounding-dino-tiny",
            role="detector",
            source="tiny:grounding-dino",
            pipeline="GroundingDinoForObjectDetection",
            focus_size=64,
            dtype="float32",
        ),
        ModelSpec(
            name="tiny-owlv2-base",
            role="detector",
            source="tiny:owlv2",
            pipeline="Owlv2ForObjectDetection",
            focus_size=64,
            dtype="float32",
        ),
        ModelSpec(
            name="tiny-sam-vit-base",
            role="segmenter",
            source="tiny:sam",
            pipeline="SamModel",
            focus_size=64,
            dtype="float32",
        ),
        # tiny twin of qwen-image-edit: the same QwenImageEditPlusPipeline (Qwen2.5-VL reading the image list, a
        # 3D causal VAE, true CFG with a negative prompt), so refine_region's editor path runs offline; the
        # role has no tiny default (TINY_FOR_ROLE): an editor is asked for by name
        ModelSpec(
            name="tiny-qwen-image-edit",
            role="editor",
            source="tiny:qwen-image-edit",
            pipeline="QwenImageEditPlusPipeline",
            focus_size=64,
            size_factor=16,
            default_steps=2,
            default_guidance=4.0,  # as qwen-image-edit's: its negative prompt and true CFG run here too
            dtype="float32",
        ),
        # upscale's model backend: a 4x latent upscaler; focus_size is the low-res tile side it was trained on
        # (128 px in, 512 px out); tiny-x4-upscaler is its twin (tools/models/twins/upscale.py)
        ModelSpec(
            name="x4-upscaler",
            role="upscaler",
            source="stabilityai/stable-diffusion-x4-upscaler",
            pipeline="StableDiffusionUpscalePipeline",
            dtype="float16",
            focus_size=128,
            default_steps=20,
            default_guidance=9.0,
            vram_gb=6,
        ),
        ModelSpec(
            name="tiny-x4-upscaler",
            role="upscaler",
            source="tiny:x4-upscaler",
            pipeline="StableDiffusionUpscalePipeline",
            focus_size=32,
            default_steps=2,
            default_guidance=9.0,
            dtype="float32",
        ),
        # judge's perceptual distance; no tiny form: random weights would give numbers that mean nothing
        ModelSpec(name="lpips-alex", role="lpips", source="lpips-alex", dtype="float32", focus_size=1024),
    )
}
TINY_FOR_ROLE = {
    "generator": "tiny",
    "inpainter": "tiny-inpaint",
    "clip": "tiny-clip",
    "vlm": "tiny-vlm",
    "detector": "tiny-grounding-dino-tiny",
    "segmenter": "tiny-sam-vit-base",
    "upscaler": "tiny-x4-upscaler",
}


def spec_label(spec: ModelSpec) -> str:
    """How results name a model: a tiny one says what its output is."""
    if spec.tiny_kind:
        return f"{TINY_LABEL} {spec.name} (random weights: output is noise, not a real image)"
    return spec.name
